//! Exact single-GPU planning.

use super::layout::Layout;
use super::model::{MigModel, State};
use crate::error::{CoreError, Result};

/// "3g.40gb×2, 1g.10gb" for a list of profile names (in first-seen order).
pub(crate) fn summarize<S: AsRef<str>>(names: &[S]) -> String {
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for n in names {
        match seen.iter_mut().find(|(s, _)| *s == n.as_ref()) {
            Some((_, k)) => *k += 1,
            None => seen.push((n.as_ref(), 1)),
        }
    }
    seen.iter()
        .map(|(n, k)| {
            if *k == 1 {
                n.to_string()
            } else {
                format!("{n}×{k}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Depth-first search over the completions of one GPU that add exactly the requested
/// multiset: profiles in canonical order (big first), each profile's instances at increasing
/// candidate indices, so every placement-distinct completion is visited once.
struct Search<'m> {
    model: &'m MigModel,
    /// Profiles with requests, in canonical order, and how many of each are still to place.
    groups: Vec<(usize, u32)>,
    chosen: Vec<usize>,
    best: Option<(u32, Vec<usize>)>,
}

impl Search<'_> {
    fn run(&mut self, g: usize, from: usize, s: State) {
        let Some(&(prof, left)) = self.groups.get(g) else {
            let cost = self.model.cost(s);
            if self.best.as_ref().is_none_or(|(b, _)| cost < *b) {
                self.best = Some((cost, self.chosen.clone()));
            }
            return;
        };
        // Bounds: what is still to place must fit in the free compute and memory.
        let (mut compute, mut mem) = (0u32, 0u32);
        for &(p, n) in &self.groups[g..] {
            compute += n * u32::from(self.model.profs[p].compute);
            mem += n * u32::from(self.model.profs[p].mem);
        }
        if compute > self.model.free_compute(s) || mem > self.model.free_memory(s) {
            return;
        }
        let range = self.model.profs[prof].cands.clone();
        let first = from.max(range.start);
        if ((range.end - first) as u32) < left {
            return;
        }
        for c in first..range.end {
            let Some(next) = self.model.add(s, &self.model.cands[c]) else {
                continue;
            };
            self.chosen.push(c);
            if left == 1 {
                self.run(g + 1, 0, next);
            } else {
                self.groups[g].1 -= 1;
                self.run(g, c + 1, next);
                self.groups[g].1 += 1;
            }
            self.chosen.pop();
        }
    }
}

impl MigModel {
    /// Visit every placement-distinct set of instances that can be added to `s` (the empty set
    /// included), adding profile `p` at most `limit[p]` times. `visit` gets the resulting state
    /// and the added candidates, in canonical order.
    pub(crate) fn extensions(
        &self,
        s: State,
        limit: &[u32],
        visit: &mut impl FnMut(State, &[usize]),
    ) {
        let mut used = vec![0u32; self.profs.len()];
        let mut chosen = Vec::new();
        self.extend_from(0, s, limit, &mut used, &mut chosen, visit);
    }

    fn extend_from(
        &self,
        from: usize,
        s: State,
        limit: &[u32],
        used: &mut [u32],
        chosen: &mut Vec<usize>,
        visit: &mut impl FnMut(State, &[usize]),
    ) {
        visit(s, chosen);
        for c in from..self.cands.len() {
            let p = self.cands[c].prof;
            if used[p] >= limit[p] {
                continue;
            }
            let Some(next) = self.add(s, &self.cands[c]) else {
                continue;
            };
            used[p] += 1;
            chosen.push(c);
            self.extend_from(c + 1, next, limit, used, chosen, visit);
            chosen.pop();
            used[p] -= 1;
        }
    }

    /// Place `requests` (profile names, repeats allowed) beside `existing`; see the module docs
    /// of [`crate::mig`] for the objective and tie-break. Returns the whole layout (existing
    /// instances included).
    pub fn plan<S: AsRef<str>>(&self, requests: &[S], existing: Option<&Layout>) -> Result<Layout> {
        let (s, slots) = self.existing_state(existing)?;
        let mut counts = vec![0u32; self.profs.len()];
        for r in requests {
            counts[self.profile_index(r.as_ref())?] += 1;
        }
        let mut order: Vec<usize> = (0..self.profs.len()).filter(|&p| counts[p] > 0).collect();
        order.sort_by_key(|&p| self.profs[p].cands.start);
        let mut search = Search {
            model: self,
            groups: order.iter().map(|&p| (p, counts[p])).collect(),
            chosen: Vec::new(),
            best: None,
        };
        search.run(0, 0, s);
        if let Some((_, added)) = search.best {
            let mut all = slots;
            all.extend(added);
            return Ok(self.layout_of(&all));
        }
        let beside = if slots.is_empty() {
            format!("an empty {}", self.key())
        } else {
            format!("{} beside {}", self.key(), self.layout_of(&slots))
        };
        let mut msg = format!(
            "cannot place {} on {beside}: {} are left",
            summarize(requests),
            self.describe_free(s)
        );
        let mut largest: Vec<usize> = Vec::new();
        self.extensions(s, &counts, &mut |_, added| {
            if added.len() > largest.len() {
                largest = added.to_vec();
            }
        });
        let most = largest.len();
        if most == 0 {
            msg.push_str(&format!("; none of the {} requests fits", requests.len()));
        } else {
            msg.push_str(&format!(
                "; at most {most} of the {} requests fit at once (e.g. {})",
                requests.len(),
                self.layout_of(&largest)
            ));
        }
        Err(CoreError::Infeasible(msg))
    }
}
