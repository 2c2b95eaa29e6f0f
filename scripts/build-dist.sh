#!/usr/bin/env bash
# The release artefacts, built into dist/ and checked:
#   - the manylinux2014 (glibc >= 2.17) abi3 wheel, linked by zig (the `ziglang` package), so it
#     runs on any x86_64 Linux of the last decade and on every CPython >= 3.9;
#   - the sdist;
#   - `auditwheel show` must find the wheel consistent with manylinux_2_17, `abi3audit --strict`
#     must find no symbol outside the stable ABI;
#   - a wheel is built again from the sdist alone (its unpacked tree, nothing of this checkout);
#   - the versions agree: Cargo.toml, both file names, `rebasin_rs.__version__`, `rebasin --version`;
#   - the wheel is installed into a fresh virtual environment and the test suite runs against the
#     installed package (not the source tree).
# Usage: bash scripts/build-dist.sh [--no-tests]     (--no-tests: everything but the last step)
# The build tools come from PyPI into a throwaway environment; dist/ is replaced whole.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tests=1
for arg in "$@"; do
    case "$arg" in
        --no-tests) tests=0 ;;
        *) echo "build-dist: unknown option $arg (use --no-tests or nothing)" >&2; exit 2 ;;
    esac
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say() { printf '\n== build-dist: %s\n' "$*"; }

say "tools (maturin, ziglang, auditwheel, abi3audit) into a throwaway environment"
python3 -m venv "$work/tools"
"$work/tools/bin/pip" install -q --upgrade pip
"$work/tools/bin/pip" install -q "maturin>=1.9,<2" "ziglang>=0.13" "auditwheel>=6" "abi3audit>=0.0.20"
tools="$work/tools/bin"
export PATH="$tools:$PATH"  # maturin finds zig through the python of the PATH (python -m ziglang)

say "wheel (manylinux2014, abi3, zig) and sdist"
"$tools/maturin" build --release --locked --zig --compatibility manylinux2014 -o "$work/dist"
"$tools/maturin" sdist -o "$work/dist"
wheel=$(ls "$work"/dist/*.whl)
sdist=$(ls "$work"/dist/*.tar.gz)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
case "$(basename "$wheel")" in
    "rebasin_rs-$version-cp39-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl") ;;
    *) echo "build-dist: unexpected wheel name $(basename "$wheel") (want version $version, cp39-abi3, manylinux2014)" >&2; exit 1 ;;
esac
[ "$(basename "$sdist")" = "rebasin_rs-$version.tar.gz" ] || { echo "build-dist: unexpected sdist name $(basename "$sdist")" >&2; exit 1; }

say "auditwheel show"
"$tools/auditwheel" show "$wheel" | tee "$work/auditwheel.txt"
tr -s ' \n' ' ' < "$work/auditwheel.txt" | grep -q 'consistent with the following platform tag: "manylinux_2_17_x86_64"' \
    || { echo "build-dist: auditwheel does not find the wheel manylinux_2_17 (manylinux2014)" >&2; exit 1; }

say "abi3audit --strict"
"$tools/abi3audit" --strict --verbose "$wheel"

say "a wheel from the sdist alone"
mkdir "$work/sdist" "$work/from-sdist"
tar -xzf "$sdist" -C "$work/sdist"
(cd "$work" && "$tools/pip" wheel -q --no-deps -w "$work/from-sdist" "$work/sdist/rebasin_rs-$version")
ls "$work"/from-sdist/rebasin_rs-"$version"-cp39-abi3-*.whl >/dev/null \
    || { echo "build-dist: the sdist did not build an abi3 wheel of version $version" >&2; exit 1; }

say "the wheel in a fresh virtual environment"
# --system-site-packages: the test dependencies already installed (torch is several GB) are
# reused; the package itself comes from the wheel, installed into the environment, which Python
# searches before the system's site-packages.
python3 -m venv --system-site-packages "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q --no-deps --force-reinstall "$wheel"
"$py" -m pip install -q "$wheel[test]"
(cd "$work" && "$py" - "$work/venv" "$version" <<'PY'
import subprocess, sys, rebasin_rs
venv, version = sys.argv[1], sys.argv[2]
assert rebasin_rs.__file__.startswith(venv), f"rebasin_rs imported from {rebasin_rs.__file__}, not the wheel"
assert rebasin_rs.__version__ == version, (rebasin_rs.__version__, version)
cli = subprocess.run([f"{venv}/bin/rebasin", "--version"], capture_output=True, text=True, check=True).stdout.strip()
assert cli == f"rebasin-rs {version}", cli
print(f"installed rebasin-rs {version} from the wheel: {rebasin_rs.__file__}")
PY
)
rm -rf "$root/dist"
mkdir "$root/dist"
cp "$wheel" "$sdist" "$root/dist/"
say "dist/: $(cd "$root/dist" && ls | tr '\n' ' ')"

if [ "$tests" = 1 ]; then
    say "the test suite against the installed wheel"
    # From the checkout's root (its tests read the README and the benches), whose python/ source
    # folder is not on the path: `import rebasin_rs` finds the installed package.
    # The environment's bin/ first on the PATH: the tests that run the `rebasin` command run the
    # wheel's.
    PATH="$work/venv/bin:$PATH" REBASIN_EXPECT_INSTALLED="$work/venv" "$py" -m pytest -q -p no:cacheprovider tests
fi
