//! A compiled feature list: which per-key aggregates exist, where each lives in a record's
//! window words, how an Observation updates them (O(1): a bucket, a session or an EWMA per
//! aggregate), and how a model row is read from them.
//!
//! Windows are pre-aggregated buckets in a ring inside the record. A bucket covers `step` ns
//! of event time and is tagged with its epoch (`ts / step + 1`, so 0 means empty); the ring
//! holds the window's buckets plus enough extra for `allowed lateness`, so an out-of-order
//! event within the lateness still lands in its own bucket and every window stays exact.
//! Identical aggregates (same value and window) share one ring; identical EWMAs share one word.

use crate::limits::{FEATURE_ROW_MAX, WINDOW_BUCKETS_MAX};

use super::spec::{self, Agg, Expr, Value, Window};

/// One event's inputs to the features.
#[derive(Debug, Clone, Copy)]
pub struct Obs<'a> {
    pub ts_ns: u64,
    pub amount: f32,
    pub features: &'a [f32],
}

impl Obs<'_> {
    #[inline]
    fn value(&self, v: Value) -> f64 {
        match v {
            Value::Amount => f64::from(self.amount),
            Value::Feature(i) => {
                f64::from(self.features.get(usize::from(i)).copied().unwrap_or(0.0))
            }
        }
    }
}

/// Which accumulator fields a ring or session keeps: count and sum always, min/max if asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    min: bool,
    max: bool,
}

impl Fields {
    fn words(self) -> usize {
        2 + usize::from(self.min) + usize::from(self.max)
    }
    fn min_at(self) -> usize {
        2
    }
    fn max_at(self) -> usize {
        2 + usize::from(self.min)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Store {
    /// All Observations since the key appeared: one accumulator.
    Lifetime { value: Value, fields: Fields },
    /// `ring` buckets of `step_ns`, each `1 + fields` words (tag first); the window is the
    /// newest `span` buckets up to the evaluated time.
    Ring {
        value: Value,
        step_ns: u64,
        span: u64,
        ring: usize,
        fields: Fields,
    },
    /// start, last, then one accumulator.
    Session {
        value: Value,
        gap_ns: u64,
        fields: Fields,
    },
    /// count, value.
    Ewma { value: Value, alpha: f64 },
}

impl Store {
    fn words(&self) -> usize {
        match self {
            Store::Lifetime { fields, .. } => fields.words(),
            Store::Ring { ring, fields, .. } => ring * (1 + fields.words()),
            Store::Session { fields, .. } => 2 + fields.words(),
            Store::Ewma { .. } => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Raw(Value),
    SinceLast,
    Agg { agg: Agg, store: usize },
    Ewma { store: usize },
    Ratio(Box<Node>, Box<Node>),
    Log1p(Box<Node>),
}

impl Node {
    fn reads_event(&self) -> bool {
        match self {
            Node::Raw(_) => true,
            Node::Ratio(a, b) => a.reads_event() || b.reads_event(),
            Node::Log1p(a) => a.reads_event(),
            Node::SinceLast | Node::Agg { .. } | Node::Ewma { .. } => false,
        }
    }
}

/// The compiled `features.list`.
#[derive(Debug, Clone, PartialEq)]
pub struct FeaturePlan {
    names: Vec<String>,
    nodes: Vec<Node>,
    stores: Vec<(Store, usize)>,
    words: usize,
}

impl FeaturePlan {
    /// Compile the list; `lateness_ns` widens every ring so late events within it stay exact.
    /// Errors name each bad entry.
    pub fn compile(list: &[String], lateness_ns: u64) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut plan = FeaturePlan {
            names: Vec::new(),
            nodes: Vec::new(),
            stores: Vec::new(),
            words: 0,
        };
        if list.is_empty() {
            problems.push("features.list is empty: a model needs at least one input".into());
        }
        if list.len() > FEATURE_ROW_MAX {
            problems.push(format!(
                "features.list has {} entries; at most {FEATURE_ROW_MAX}",
                list.len()
            ));
        }
        let mut specs = Vec::new();
        for (i, text) in list.iter().enumerate() {
            match spec::parse(text) {
                Ok(e) => specs.push(e),
                Err(e) => problems.push(format!("features.list[{i}] = {text:?}: {e}")),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut stores: Vec<Store> = Vec::new();
        for (text, e) in list.iter().zip(&specs) {
            match plan.node(e, lateness_ns, &mut stores) {
                Ok(n) => {
                    plan.names.push(text.trim().to_owned());
                    plan.nodes.push(n);
                }
                Err(e) => problems.push(format!("features.list entry {text:?}: {e}")),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut at = 0;
        for s in stores {
            let w = s.words();
            plan.stores.push((s, at));
            at += w;
        }
        plan.words = at;
        Ok(plan)
    }

    fn node(&self, e: &Expr, lateness_ns: u64, stores: &mut Vec<Store>) -> Result<Node, String> {
        Ok(match e {
            Expr::Raw(v) => Node::Raw(*v),
            Expr::SinceLast => Node::SinceLast,
            Expr::Ratio(a, b) => Node::Ratio(
                Box::new(self.node(a, lateness_ns, stores)?),
                Box::new(self.node(b, lateness_ns, stores)?),
            ),
            Expr::Log1p(a) => Node::Log1p(Box::new(self.node(a, lateness_ns, stores)?)),
            Expr::Ewma { value, alpha } => {
                let s = Store::Ewma {
                    value: *value,
                    alpha: *alpha,
                };
                let store = match stores.iter().position(|x| *x == s) {
                    Some(i) => i,
                    None => {
                        stores.push(s);
                        stores.len() - 1
                    }
                };
                Node::Ewma { store }
            }
            Expr::Agg { agg, value, window } => {
                let want = Fields {
                    min: *agg == Agg::Min,
                    max: *agg == Agg::Max,
                };
                let (step_ns, span) = match *window {
                    Window::Tumbling { size_ns } => (size_ns, 1),
                    Window::Sliding { size_ns, step_ns } => (step_ns, size_ns / step_ns),
                    _ => (0, 0),
                };
                // The window's buckets, the lateness in buckets, and one more so an event a
                // hair out of order (cross-shard arrival) still finds its bucket.
                let ring = span + lateness_ns.div_ceil(step_ns.max(1)) + 1;
                if step_ns > 0 && ring > 2 * WINDOW_BUCKETS_MAX as u64 {
                    return Err(format!(
                        "needs {ring} buckets with the allowed lateness; at most {} (widen the step or cut time.allowed_lateness_ms)",
                        2 * WINDOW_BUCKETS_MAX
                    ));
                }
                let same = |s: &Store| match (s, window) {
                    (Store::Lifetime { value: v, .. }, Window::Lifetime) => v == value,
                    (
                        Store::Ring {
                            value: v,
                            step_ns: st,
                            span: sp,
                            ..
                        },
                        Window::Tumbling { .. } | Window::Sliding { .. },
                    ) => v == value && *st == step_ns && *sp == span,
                    (
                        Store::Session {
                            value: v,
                            gap_ns: g,
                            ..
                        },
                        Window::Session { gap_ns },
                    ) => v == value && g == gap_ns,
                    _ => false,
                };
                let store = match stores.iter().position(same) {
                    Some(i) => i,
                    None => {
                        let fields = Fields {
                            min: false,
                            max: false,
                        };
                        stores.push(match *window {
                            Window::Lifetime => Store::Lifetime {
                                value: *value,
                                fields,
                            },
                            Window::Session { gap_ns } => Store::Session {
                                value: *value,
                                gap_ns,
                                fields,
                            },
                            _ => Store::Ring {
                                value: *value,
                                step_ns,
                                span,
                                ring: ring as usize,
                                fields,
                            },
                        });
                        stores.len() - 1
                    }
                };
                if let Store::Lifetime { fields, .. }
                | Store::Ring { fields, .. }
                | Store::Session { fields, .. } = &mut stores[store]
                {
                    fields.min |= want.min;
                    fields.max |= want.max;
                }
                Node::Agg { agg: *agg, store }
            }
        })
    }

    /// Model inputs per row.
    pub fn width(&self) -> usize {
        self.nodes.len()
    }

    /// Window words per record.
    pub fn words(&self) -> usize {
        self.words
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Apply one Observation to a key's window words.
    #[inline]
    pub fn update(&self, words: &mut [u64], obs: &Obs<'_>) {
        for (store, at) in &self.stores {
            match *store {
                Store::Lifetime { value, fields } => {
                    acc_add(&mut words[*at..], fields, obs.value(value));
                }
                Store::Ring {
                    value,
                    step_ns,
                    ring,
                    fields,
                    ..
                } => {
                    let epoch = obs.ts_ns / step_ns;
                    let tag = epoch + 1;
                    let stride = 1 + fields.words();
                    let b = *at + (epoch % ring as u64) as usize * stride;
                    let bucket = &mut words[b..b + stride];
                    if bucket[0] < tag {
                        bucket.fill(0);
                        bucket[0] = tag;
                    }
                    // A bucket already reused for a newer epoch: the event is older than the
                    // ring reaches (beyond the lateness), so no window it could count in is
                    // still evaluated.
                    if bucket[0] == tag {
                        acc_add(&mut bucket[1..], fields, obs.value(value));
                    }
                }
                Store::Session {
                    value,
                    gap_ns,
                    fields,
                } => {
                    let s = &mut words[*at..*at + 2 + fields.words()];
                    let t = obs.ts_ns;
                    let (start, last, count) = (s[0], s[1], s[2]);
                    if count == 0 || t > last.saturating_add(gap_ns) {
                        s.fill(0);
                        s[0] = t;
                        s[1] = t;
                    } else if t.saturating_add(gap_ns) < start {
                        // Belongs to an earlier session that is no longer kept.
                        continue;
                    } else {
                        s[0] = start.min(t);
                        s[1] = last.max(t);
                    }
                    acc_add(&mut s[2..], fields, obs.value(value));
                }
                Store::Ewma { value, alpha } => {
                    let v = obs.value(value);
                    let e = &mut words[*at..*at + 2];
                    let next = if e[0] == 0 {
                        v
                    } else {
                        alpha * v + (1.0 - alpha) * f64::from_bits(e[1])
                    };
                    e[0] = e[0].saturating_add(1);
                    e[1] = next.to_bits();
                }
            }
        }
    }

    /// Fill `row` (one value per feature, in list order) as of the event's time.
    /// `prev_event_ns` is the key's newest event time before this one.
    #[inline]
    pub fn build_row(&self, words: &[u64], prev_event_ns: u64, obs: &Obs<'_>, row: &mut [f32]) {
        for (slot, node) in row.iter_mut().zip(&self.nodes) {
            *slot = self.eval(node, words, prev_event_ns, obs) as f32;
        }
    }

    /// Each feature's value for a key as of `at_ns` (admin view; allocates). Features that
    /// read the event's own fields have no value between events (None).
    pub fn values_at(
        &self,
        words: &[u64],
        last_event_ns: u64,
        at_ns: u64,
    ) -> Vec<(&str, Option<f64>)> {
        let obs = Obs {
            ts_ns: at_ns,
            amount: 0.0,
            features: &[],
        };
        self.names
            .iter()
            .zip(&self.nodes)
            .map(|(name, node)| {
                let v = (!node.reads_event()).then(|| self.eval(node, words, last_event_ns, &obs));
                (name.as_str(), v)
            })
            .collect()
    }

    fn eval(&self, node: &Node, words: &[u64], prev_event_ns: u64, obs: &Obs<'_>) -> f64 {
        match node {
            Node::Raw(v) => obs.value(*v),
            Node::SinceLast => obs.ts_ns.saturating_sub(prev_event_ns) as f64 * 1e-9,
            Node::Ratio(a, b) => {
                let d = self.eval(b, words, prev_event_ns, obs);
                if d.abs() > f64::EPSILON {
                    self.eval(a, words, prev_event_ns, obs) / d
                } else {
                    1.0
                }
            }
            Node::Log1p(a) => self.eval(a, words, prev_event_ns, obs).max(0.0).ln_1p(),
            Node::Ewma { store } => {
                let at = self.stores[*store].1;
                f64::from_bits(words[at + 1])
            }
            Node::Agg { agg, store } => {
                let (s, at) = &self.stores[*store];
                let mut a = Acc::default();
                match *s {
                    Store::Lifetime { fields, .. } => a.merge(&words[*at..], fields),
                    Store::Session { gap_ns, fields, .. } => {
                        let w = &words[*at..];
                        // The kept session is the event's own unless the event is older.
                        if w[2] > 0 && obs.ts_ns.saturating_add(gap_ns) >= w[0] {
                            a.merge(&w[2..], fields);
                        }
                    }
                    Store::Ring {
                        step_ns,
                        span,
                        ring,
                        fields,
                        ..
                    } => {
                        let newest = obs.ts_ns / step_ns + 1;
                        let oldest = newest.saturating_sub(span - 1).max(1);
                        let stride = 1 + fields.words();
                        for b in words[*at..*at + ring * stride].chunks_exact(stride) {
                            if (oldest..=newest).contains(&b[0]) {
                                a.merge(&b[1..], fields);
                            }
                        }
                    }
                    Store::Ewma { .. } => {}
                }
                a.get(*agg)
            }
        }
    }
}

#[inline]
fn acc_add(w: &mut [u64], f: Fields, v: f64) {
    let first = w[0] == 0;
    w[0] += 1;
    w[1] = (f64::from_bits(w[1]) + v).to_bits();
    if f.min {
        let m = f64::from_bits(w[f.min_at()]);
        w[f.min_at()] = if first { v } else { m.min(v) }.to_bits();
    }
    if f.max {
        let m = f64::from_bits(w[f.max_at()]);
        w[f.max_at()] = if first { v } else { m.max(v) }.to_bits();
    }
}

/// Aggregates merged over buckets.
#[derive(Default)]
struct Acc {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Acc {
    fn merge(&mut self, w: &[u64], f: Fields) {
        let n = w[0];
        if n == 0 {
            return;
        }
        let first = self.count == 0;
        self.count += n;
        self.sum += f64::from_bits(w[1]);
        if f.min {
            let m = f64::from_bits(w[f.min_at()]);
            self.min = if first { m } else { self.min.min(m) };
        }
        if f.max {
            let m = f64::from_bits(w[f.max_at()]);
            self.max = if first { m } else { self.max.max(m) };
        }
    }

    fn get(&self, agg: Agg) -> f64 {
        match agg {
            Agg::Count => self.count as f64,
            Agg::Sum => self.sum,
            Agg::Mean if self.count > 0 => self.sum / self.count as f64,
            Agg::Mean => 0.0,
            Agg::Min => self.min,
            Agg::Max => self.max,
        }
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
