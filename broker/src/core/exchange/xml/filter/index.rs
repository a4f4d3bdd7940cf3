//! The compiled bindings of one exchange, indexed by the value each must find in a body.

use std::collections::{BTreeSet, HashMap};

use super::doc::{Doc, ROOT};
use super::eval::{Context, Item};
use super::{CmpOp, Expr, Filter, Path, Start, Step};

/// Compiled filters by binding id, indexed for a message to meet only its candidates.
#[derive(Debug, Default)]
pub struct FilterSet {
    filters: HashMap<u64, Filter>,
    /// Distinct guard paths, each with the bindings that need a value there.
    guards: Vec<Guard>,
    /// Compiled bindings with no guard: every message meets them.
    unguarded: BTreeSet<u64>,
}

#[derive(Debug)]
struct Guard {
    path: Path,
    by_value: HashMap<String, Vec<u64>>,
    count: usize,
}

impl FilterSet {
    /// Adds binding `id`'s filter.
    pub fn add(&mut self, id: u64, filter: Filter) {
        match guard(&filter.expr) {
            Some((path, value)) => {
                let g = match self.guards.iter().position(|g| g.path == path) {
                    Some(i) => &mut self.guards[i],
                    None => {
                        self.guards.push(Guard {
                            path,
                            by_value: HashMap::new(),
                            count: 0,
                        });
                        let last = self.guards.len() - 1;
                        &mut self.guards[last]
                    }
                };
                g.by_value.entry(value).or_default().push(id);
                g.count += 1;
            }
            None => {
                self.unguarded.insert(id);
            }
        }
        self.filters.insert(id, filter);
    }

    /// Removes binding `id`'s filter, if it had one.
    pub fn remove(&mut self, id: u64) {
        let Some(filter) = self.filters.remove(&id) else {
            return;
        };
        if self.unguarded.remove(&id) {
            return;
        }
        if let Some((path, value)) = guard(&filter.expr) {
            if let Some(i) = self.guards.iter().position(|g| g.path == path) {
                let g = &mut self.guards[i];
                if let Some(ids) = g.by_value.get_mut(&value) {
                    ids.retain(|x| *x != id);
                    if ids.is_empty() {
                        g.by_value.remove(&value);
                    }
                }
                g.count -= 1;
                if g.count == 0 {
                    self.guards.swap_remove(i);
                }
            }
        }
    }

    /// Whether binding `id` has a compiled filter.
    pub fn contains(&self, id: u64) -> bool {
        self.filters.contains_key(&id)
    }

    /// The compiled bindings `doc` matches, by id, ascending; `wanted` says which of the
    /// candidates to evaluate at all (the routing key decides).
    pub fn matches(
        &self,
        doc: &Doc,
        headers: Option<&crate::wire::FieldTable>,
        wanted: impl Fn(u64) -> bool,
    ) -> Vec<u64> {
        let ctx = Context::new(doc, headers);
        let mut candidates: Vec<u64> = self.unguarded.iter().copied().collect();
        for g in &self.guards {
            // Paths in guards have no dynamic errors of their own: a failure finds nothing.
            let items = ctx.select(&g.path, Item::Node(ROOT)).unwrap_or_default();
            for item in items {
                if let Some(ids) = g.by_value.get(ctx.value(item)) {
                    candidates.extend_from_slice(ids);
                }
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates.retain(|id| {
            wanted(*id)
                && self
                    .filters
                    .get(id)
                    .is_some_and(|f| f.matches(doc, headers))
        });
        candidates
    }
}

/// A path from the document and a string every match needs among the values it selects:
/// found in a conjunction, as an equality with a string literal, directly or in a
/// predicate. `None` when the query has no such necessary condition.
fn guard(e: &Expr) -> Option<(Path, String)> {
    guard_in(
        e,
        &Path {
            start: Start::Root,
            steps: Vec::new(),
        },
    )
}

fn guard_in(e: &Expr, context: &Path) -> Option<(Path, String)> {
    match e {
        Expr::And(terms) => terms.iter().find_map(|t| guard_in(t, context)),
        Expr::Cmp(CmpOp::Eq, a, b) => match (&**a, &**b) {
            (Expr::Path(p), Expr::Str(s)) | (Expr::Str(s), Expr::Path(p)) => {
                Some((joined(context, p, p.steps.len()), s.clone()))
            }
            _ => None,
        },
        Expr::Path(p) => p.steps.iter().enumerate().find_map(|(i, step)| {
            let at = joined(context, p, i + 1);
            step.preds.iter().find_map(|pred| guard_in(pred, &at))
        }),
        _ => None,
    }
}

/// `p`'s first `steps` steps appended to `context` (or alone, from an absolute `p`), with
/// no predicates: a guard may select more than the query, never less.
fn joined(context: &Path, p: &Path, steps: usize) -> Path {
    let base: &[Step] = match p.start {
        Start::Root => &[],
        Start::Context => &context.steps,
    };
    Path {
        start: Start::Root,
        steps: base
            .iter()
            .chain(&p.steps[..steps])
            .map(|s| Step {
                axis: s.axis,
                test: s.test.clone(),
                preds: Vec::new(),
            })
            .collect(),
    }
}
