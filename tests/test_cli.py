"""The ``rebasin`` command, run in subprocesses: every command, bad inputs, atomic outputs."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

import rebasin_rs.torch as rbt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = ["--model", "_cli_models:small_cnn", "--input-shape", "1,3,8,8"]


def rebasin(*args, cwd, check_rc=0):
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "rebasin_rs", *map(str, args)], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    if check_rc is not None:
        assert p.returncode == check_rc, p.stderr
    return p


def one_line_error(p, pattern):
    assert p.returncode == 1
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rebasin: error: "), p.stderr
    assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture()
def ckpts(tmp_path):
    sys.path.insert(0, HERE)
    from _cli_models import small_cnn

    sys.path.remove(HERE)
    models = []
    for s in (0, 1):
        torch.manual_seed(s)
        m = small_cnn().eval()
        with torch.no_grad():
            for mod in m.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.running_mean.normal_(0, 0.2)
                    mod.running_var.uniform_(0.5, 1.5)
        models.append(m)
        safetensors_torch.save_file(m.state_dict(), str(tmp_path / f"m{s}.safetensors"))
        torch.save(m.state_dict(), tmp_path / f"m{s}.pt")
    x = torch.randn(40, 3, 8, 8)
    safetensors_torch.save_file({"x": x, "y": torch.randint(0, 5, (40,))}, str(tmp_path / "data.safetensors"))
    return tmp_path, models


def load(path):
    return safetensors_torch.load_file(str(path)) if str(path).endswith(".safetensors") else torch.load(
        path, weights_only=True)


def test_align_writes_b_aligned_like_the_python_api(ckpts):
    d, (a, b) = ckpts
    p = rebasin("align", "m0.safetensors", "m1.pt", *MODEL, "-o", "out.safetensors", cwd=d)
    assert "wrote out.safetensors" in p.stderr
    expected, _ = rbt.align(a, b, torch.randn(1, 3, 8, 8))
    got = load(d / "out.safetensors")
    assert set(got) == set(expected.state_dict())
    for k, v in expected.state_dict().items():
        assert torch.equal(got[k], v), k
    assert not [f for f in os.listdir(d) if f.startswith(".rebasin-")], "temporary file left behind"


def test_spec_file_aligns_state_dicts_without_a_module(ckpts):
    d, _ = ckpts
    rebasin("spec", *MODEL, "-o", "spec.json", cwd=d)
    rebasin("align", "m0.safetensors", "m1.safetensors", *MODEL, "-o", "via_model.pt", cwd=d)
    rebasin("align", "m0.safetensors", "m1.safetensors", "--model", "spec.json", "-o", "via_spec.pt", cwd=d)
    x, y = load(d / "via_model.pt"), load(d / "via_spec.pt")
    for k in x:
        assert torch.equal(x[k], y[k]), k


def test_merge_plain_and_aligned(ckpts):
    d, (a, b) = ckpts
    rebasin("merge", "m0.safetensors", "m1.safetensors", "--alpha", "0.25", "-o", "plain.safetensors", "-q", cwd=d)
    plain = load(d / "plain.safetensors")
    assert torch.allclose(plain["0.weight"], 0.75 * a[0].weight + 0.25 * b[0].weight)
    assert torch.equal(plain["1.num_batches_tracked"], a[1].num_batches_tracked)
    p = rebasin("merge", "m0.safetensors", "m1.safetensors", "--align", *MODEL, "-o", "al.safetensors", "-q", cwd=d)
    assert p.stderr == "" and p.stdout == "", "--quiet must silence everything"
    aligned_b, _ = rbt.align(a, b, torch.randn(1, 3, 8, 8))
    merged = load(d / "al.safetensors")
    assert torch.allclose(merged["3.weight"], 0.5 * a[3].weight + 0.5 * aligned_b[3].weight)


def test_barrier_prints_both_barriers_and_plots(ckpts):
    d, _ = ckpts
    p = rebasin("barrier", "m0.safetensors", "m1.safetensors", *MODEL, "--data", "data.safetensors", "--align",
                "--alphas", "5", "--reset-bn", "--plot", "curves.png", cwd=d)
    assert re.search(r"loss barrier\s+-?[\d.]+\s+-?[\d.]+", p.stdout), p.stdout
    assert re.search(r"accuracy barrier\s+-?[\d.]+\s+-?[\d.]+", p.stdout), p.stdout
    with open(d / "curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_demo_halves_the_barrier(tmp_path):
    p = rebasin("demo", "-o", "demo.png", cwd=tmp_path)
    naive, aligned = map(float, re.search(r"train loss barrier\s+([\d.]+)\s+([\d.]+)", p.stdout).groups())
    assert aligned <= naive / 2, p.stdout
    mid = re.search(r"accuracy \(train\) at alpha 0.5\s+([\d.]+)%\s+([\d.]+)%", p.stdout)
    assert float(mid.group(2)) > float(mid.group(1)) + 20, p.stdout
    assert os.path.getsize(tmp_path / "demo.png") > 10_000
    assert float(re.search(r"demo took ([\d.]+) s", p.stdout).group(1)) < 120


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_bad_inputs_give_one_line_errors(ckpts):
    d, _ = ckpts
    one_line_error(rebasin("align", "m0.safetensors", "missing.pt", *MODEL, "-o", "o.pt", cwd=d, check_rc=None),
                   "missing.pt.*does not exist")
    one_line_error(rebasin("align", "m0.safetensors", "m1.safetensors", *MODEL, "-o", "m1.safetensors", cwd=d,
                           check_rc=None), "also an input")
    one_line_error(rebasin("merge", "m0.safetensors", "m1.safetensors", "-o", "nodir/o.pt", cwd=d, check_rc=None),
                   "does not exist")
    one_line_error(rebasin("align", "m0.safetensors", "m1.safetensors", "--model", "_cli_models:small_cnn",
                           "--model-kwargs", '{"num_classes": 7}', "-o", "o.pt", cwd=d, check_rc=None),
                   "does not fit --model")
    one_line_error(rebasin("align", "m0.safetensors", "m1.safetensors", "--model", "_cli_models:nope", "-o", "o.pt",
                           cwd=d, check_rc=None), "cannot import")
    one_line_error(rebasin("align", "m0.safetensors", "m1.safetensors", "--model", "_cli_models:not_a_module",
                           "-o", "o.pt", cwd=d, check_rc=None), "did not return a torch.nn.Module")
    one_line_error(rebasin("align", "m0.safetensors", "m1.safetensors", *MODEL, "--model-kwargs", "{oops",
                           "-o", "o.pt", cwd=d, check_rc=None), "not JSON")
    one_line_error(rebasin("align", "m0.safetensors", "m1.safetensors", "--model", "_cli_models:small_cnn",
                           "--input-shape", "1,3", "-o", "o.pt", cwd=d, check_rc=None), "could not trace")
    one_line_error(rebasin("merge", "m0.safetensors", "data.safetensors", "-o", "o.pt", cwd=d, check_rc=None),
                   "different names")
    one_line_error(rebasin("barrier", "m0.safetensors", "m1.safetensors", *MODEL, "--data", "m0.safetensors",
                           cwd=d, check_rc=None), "'x'")
    # A pickle that runs code is refused (weights_only=True), and nothing ran.
    with open(d / "evil.pt", "wb") as f:
        pickle.dump({"0.weight": Evil()}, f)
    one_line_error(rebasin("merge", "m0.safetensors", "evil.pt", "-o", "o.pt", cwd=d, check_rc=None),
                   "could not be read")
    assert not os.path.exists(d / "pwned.txt")
    assert not os.path.exists(d / "o.pt")


def test_untraceable_model_is_one_line(tmp_path):
    torch.manual_seed(0)
    sys.path.insert(0, HERE)
    from _cli_models import untraceable

    sys.path.remove(HERE)
    for s in (0, 1):
        safetensors_torch.save_file(untraceable().state_dict(), str(tmp_path / f"u{s}.safetensors"))
    one_line_error(rebasin("align", "u0.safetensors", "u1.safetensors", "--model", "_cli_models:untraceable",
                           "--input-shape", "2,4", "-o", "o.pt", cwd=tmp_path, check_rc=None),
                   "could not trace.*spec file")


def test_help_and_version(tmp_path):
    p = rebasin("--help", cwd=tmp_path)
    for cmd in ("align", "merge", "barrier", "spec", "demo"):
        assert cmd in p.stdout
    assert "rebasin-rs" in rebasin("--version", cwd=tmp_path).stdout


def test_console_script_is_installed(tmp_path):
    import shutil

    script = shutil.which("rebasin")
    if script is None:
        pytest.skip("the package is not installed with pip (the console script comes with it)")
    p = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "rebasin-rs" in p.stdout
