//! Dijkstra shortest augmenting paths from each free row, on dense vectorised passes, with the
//! tight-pair phase (`super::tight`) called in when the searches grow expensive.

use super::{CostValue, LapError, Solver, FREE};

/// One shortest-path search step: column `col` (assigned to `row`) was scanned at distance `d`,
/// relaxing the other columns with offset `h`.
#[derive(Clone, Copy)]
struct Step {
    col: usize,
    row: usize,
    h: f64,
    d: f64,
}

/// Whether a test asked for the tight-pair phase before every search (see `FORCE_TIGHT`).
#[inline(always)]
fn tight_forced() -> bool {
    #[cfg(test)]
    return FORCE_TIGHT.with(|f| f.get());
    #[cfg(not(test))]
    false
}

#[cfg(test)]
thread_local! {
    /// Set by tests to run the tight-pair phase on every problem, small ones included (it
    /// otherwise runs only once the searches have scanned as many rows as the matrix has).
    pub(in crate::lap) static FORCE_TIGHT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Scratch of the shortest-path searches: tentative distances, the scanned steps, the path.
struct Paths {
    dd: Vec<f64>,
    steps: Vec<Step>,
    path: Vec<(usize, usize)>,
}

impl<T: CostValue, const MAX: bool, const AVX2: bool> Solver<'_, T, MAX, AVX2> {
    /// The first free column at distance `dmin` in a shortest-path search.
    #[inline(always)]
    fn free_at_distance(&self, dd: &[f64], dmin: f64) -> Option<usize> {
        self.free_cols.iter().copied().find(|&j| dd[j] == dmin)
    }

    /// Dijkstra shortest augmenting paths from each free row, on dense vectorised passes.
    ///
    /// On tie-heavy matrices a search can scan hundreds of rows across a plateau of equal
    /// distances; once the searches have scanned as many rows as the matrix has, the remaining
    /// free rows first go through the tight-pair phase (`tight`), which costs at most one more
    /// such pass and on integers in 0..1000 at n = 4000 matched 540 of 560 rows (2.7 s -> 0.2 s).
    /// It runs again after each further pass's worth of scans for as long as it matches rows.
    #[inline(always)]
    pub(super) fn shortest_augmenting_paths(
        &mut self,
        mut free: Vec<usize>,
        mut ties: bool,
    ) -> Result<(), LapError> {
        let mut p = Paths {
            dd: vec![0.0; self.m],
            steps: Vec::new(),
            path: Vec::new(),
        };
        let (mut scans, mut tight_helps) = (0, true);
        let forced = tight_forced();
        let mut k = 0;
        while k < free.len() {
            if (ties || forced) && tight_helps && (scans >= self.n || forced) {
                let mut rest = free.split_off(k);
                let before = rest.len();
                self.tight_augment(&mut rest);
                tight_helps = rest.len() < before;
                (free, k, scans) = (rest, 0, 0);
                continue;
            }
            let (n_scans, tied) = self.augment_from(free[k], &mut p)?;
            scans += n_scans;
            ties |= tied;
            k += 1;
        }
        Ok(())
    }

    /// One shortest augmenting path from free row `f`, applied. Returns the rows it scanned and
    /// whether it met a tie at the smallest distance.
    #[inline(always)]
    fn augment_from(&mut self, f: usize, p: &mut Paths) -> Result<(usize, bool), LapError> {
        let Paths { dd, steps, path } = p;
        steps.clear();
        let (mut dmin, mut jmin, mut tied) = self.dijkstra_init(f, dd);
        let mut any_tie = false;
        loop {
            if dmin == f64::INFINITY {
                return Err(LapError::Infeasible);
            }
            // Among columns at the same distance, a free one ends the search (as in scipy): on
            // tie-heavy matrices scanning the assigned ones first made every search visit most
            // rows.
            if tied && self.y[jmin] != FREE {
                any_tie = true;
                if let Some(j) = self.free_at_distance(dd, dmin) {
                    jmin = j;
                }
            }
            let i = self.y[jmin];
            if i == FREE {
                break;
            }
            let h = (self.at(i, jmin) - self.v[jmin]) - dmin;
            steps.push(Step {
                col: jmin,
                row: i,
                h,
                d: dmin,
            });
            dd[jmin] = f64::NEG_INFINITY;
            (dmin, jmin, tied) = self.dijkstra_scan(i, dd, h);
        }
        // Trace the path back before the potentials move (predecessors are recomputed from them).
        path.clear();
        let mut j = jmin;
        let mut upto = steps.len();
        loop {
            match self.pred_of(f, j, &steps[..upto]) {
                None => {
                    path.push((f, j));
                    break;
                }
                Some(s) => {
                    path.push((steps[s].row, j));
                    j = steps[s].col;
                    upto = s;
                }
            }
        }
        for s in steps.iter() {
            // `s.d <= dmin` in exact arithmetic; never raise a potential on rounding, which
            // would break the bounds of the candidate lists.
            let delta = s.d - dmin;
            if delta < 0.0 {
                self.v[s.col] += delta;
            }
        }
        self.take_free(jmin);
        for &(i, j) in path.iter() {
            self.x[i] = j;
            self.y[j] = i;
        }
        Ok((steps.len() + 1, any_tie))
    }

    /// The step whose row last lowered the distance of column `j` (None: the start row `f`),
    /// recomputed with exactly the arithmetic of `dijkstra_init` and `dijkstra_scan`.
    #[inline(always)]
    fn pred_of(&self, f: usize, j: usize, steps: &[Step]) -> Option<usize> {
        let vj = self.v[j];
        let mut best = self.at(f, j) - vj;
        let mut pred = None;
        for (s, st) in steps.iter().enumerate() {
            let t = (self.at(st.row, j) - vj) - st.h;
            if t < best {
                best = t;
                pred = Some(s);
            }
        }
        pred
    }
}
