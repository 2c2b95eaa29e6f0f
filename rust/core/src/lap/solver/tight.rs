//! Augmenting paths through tight pairs, for the rows the shortest paths find expensive.
//!
//! Why: on integer costs in a range somewhat smaller than the matrix (0..1000 at n = 4000) each
//! row has a handful of columns at its minimum reduced cost, the row reduction leaves hundreds of
//! rows at such ties, and each shortest-path search then scans hundreds of dense rows across the
//! plateau of equal distances: 2.7 s at n = 4000, about scipy's time. Most of those rows can be
//! matched without moving any potential, along alternating paths of *tight* pairs (a column at
//! its row's minimum reduced cost), which are few per row. A depth-first search per free row over
//! that sparse graph reads each row's tight columns once, when it first reaches the row, so a
//! phase costs at most one pass over the matrix; `Solver::shortest_augmenting_paths` runs it once
//! the searches have scanned a pass's worth of rows (0.2 s on that matrix). The rows it cannot
//! match go on to the shortest paths.
//!
//! Soundness: a row moved along a path takes a column at its own row minimum (computed with the
//! arithmetic of the other passes), which is the state the row reduction leaves every assigned
//! row in; no potential changes, so every other row keeps its minimum.

use super::{CostValue, Solver, FREE};

/// Tight columns kept per row. A row with more ties than this keeps the first ones; the search
/// only finds fewer paths then (the shortest paths do the rest), it never goes wrong.
const CAP: usize = 16;

/// `deg` of a row whose tight columns were not collected yet.
const UNREAD: u8 = u8::MAX;

/// The phase's state: the tight columns read so far and the search's scratch.
struct Tight {
    /// `adj[i * CAP..][..deg[i]]`: the tight columns of row `i`, once read.
    adj: Vec<u32>,
    deg: Vec<u8>,
    /// `seen[j] == stamp`: column j was reached since the last match. A search that fails
    /// leaves its columns seen: no later search can find a free column through them until the
    /// matching changes.
    seen: Vec<u32>,
    stamp: u32,
    /// The search path: rows, the next edge of each, and the columns between them.
    rows: Vec<usize>,
    next: Vec<usize>,
    via: Vec<usize>,
}

impl<T: CostValue, const MAX: bool, const AVX2: bool> Solver<'_, T, MAX, AVX2> {
    /// Matches free rows along alternating paths of tight pairs; `free` keeps the others.
    // Inlined into the AVX2 entry point like every pass of the solver (see `dispatch`); for the
    // same reason the searches are loops, not closures.
    #[inline(always)]
    pub(super) fn tight_augment(&mut self, free: &mut Vec<usize>) {
        let (n, m) = (self.n, self.m);
        // A row's tight columns are read when a search first reaches it: a search that succeeds
        // at once reads one or two rows, not the whole matrix.
        let mut t = Tight {
            adj: vec![0; n * CAP],
            deg: vec![UNREAD; n],
            seen: vec![0; m],
            stamp: 1,
            rows: Vec::new(),
            next: Vec::new(),
            via: Vec::new(),
        };
        let mut left = Vec::with_capacity(free.len());
        for &f in free.iter() {
            if !self.tight_search(&mut t, f) {
                left.push(f);
            }
        }
        *free = left;
    }

    /// A depth-first search from free row `f` over tight pairs to a free column; on success the
    /// path is applied and the answer is true. Each row is read at most once per phase.
    #[inline(always)]
    fn tight_search(&mut self, t: &mut Tight, f: usize) -> bool {
        t.rows.clear();
        t.next.clear();
        t.via.clear();
        t.rows.push(f);
        t.next.push(0);
        while let Some(&i) = t.rows.last() {
            let k = t.rows.len() - 1;
            if t.deg[i] == UNREAD {
                t.deg[i] = self.tight_columns(i, &mut t.adj[i * CAP..(i + 1) * CAP]);
            }
            if t.next[k] == t.deg[i] as usize {
                t.rows.pop();
                t.next.pop();
                t.via.pop();
                continue;
            }
            let j = t.adj[i * CAP + t.next[k]] as usize;
            t.next[k] += 1;
            if t.seen[j] == t.stamp {
                continue;
            }
            t.seen[j] = t.stamp;
            if self.y[j] == FREE {
                // Row `rows[k]` takes `j`, each earlier row the column it was reached through.
                let mut col = j;
                for level in (0..=k).rev() {
                    let r = t.rows[level];
                    self.x[r] = col;
                    self.y[col] = r;
                    if level > 0 {
                        col = t.via[level - 1];
                    }
                }
                self.take_free(j);
                t.stamp += 1;
                return true;
            }
            t.via.push(j);
            t.rows.push(self.y[j]);
            t.next.push(0);
        }
        false
    }

    /// Writes the first columns at row `i`'s minimum reduced cost into `out`; returns how many.
    #[inline(always)]
    fn tight_columns(&self, i: usize, out: &mut [u32]) -> u8 {
        let (low, _, _) = self.row_min2(i);
        if low == f64::INFINITY {
            return 0;
        }
        let row = self.row(i);
        let mut d = 0;
        for (j, (&c, &vj)) in row.iter().zip(&self.v).enumerate() {
            if super::cost::<T, MAX>(c) - vj == low {
                out[d] = j as u32;
                d += 1;
                if d == out.len() {
                    break;
                }
            }
        }
        d as u8
    }
}
