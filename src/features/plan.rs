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
    /// `slots` sessions, each start, last, then one accumulator (count 0: an empty slot),
    /// oldest first, the used ones packed at the front. Sessions never touch: one ends more
    /// than the gap before the next starts. With a lateness there are slots for every
    /// session a late event could still reach, so one that bridges two merges them.
    Session {
        value: Value,
        gap_ns: u64,
        slots: usize,
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
            Store::Session { slots, fields, .. } => slots * (2 + fields.words()),
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
                let slots = match *window {
                    Window::Session { gap_ns } => session_slots(gap_ns, lateness_ns),
                    _ => 0,
                };
                if slots > 2 * WINDOW_BUCKETS_MAX as u64 {
                    return Err(format!(
                        "needs {slots} sessions kept with the allowed lateness; at most {} (widen the gap or cut time.allowed_lateness_ms)",
                        2 * WINDOW_BUCKETS_MAX
                    ));
                }
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
                                slots: slots as usize,
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

    /// Whether any session aggregate keeps more than one session (for late events to merge).
    pub fn keeps_several_sessions(&self) -> bool {
        self.stores
            .iter()
            .any(|(s, _)| matches!(s, Store::Session { slots, .. } if *slots > 1))
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
                    slots,
                    fields,
                } => {
                    let stride = 2 + fields.words();
                    let all = &mut words[*at..*at + slots * stride];
                    session_add(all, stride, gap_ns, fields, obs.ts_ns, obs.value(value));
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
                    Store::Session {
                        gap_ns,
                        slots,
                        fields,
                        ..
                    } => {
                        // The newest session that starts no later than a gap after the
                        // time: the event's own (a later one within the gap would have
                        // merged with it), or between events the newest one.
                        let stride = 2 + fields.words();
                        let own = words[*at..*at + slots * stride]
                            .chunks_exact(stride)
                            .rev()
                            .find(|s| s[2] > 0 && s[0] <= obs.ts_ns.saturating_add(gap_ns));
                        if let Some(s) = own {
                            a.merge(&s[2..], fields);
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

/// Sessions a key keeps for a gap and a lateness. Every event a key is applied at its time is
/// at least its newest event time minus the lateness L (the shard's watermark is never behind
/// a key's newest event), so only a session with `last + gap >= newest - L` can still be
/// reached. All but the oldest of those start after `newest - L`, and each more than a gap
/// after the one before, so there are at most ceil(L / gap) + 1; without a lateness, 1.
fn session_slots(gap_ns: u64, lateness_ns: u64) -> u64 {
    if lateness_ns == 0 {
        1
    } else {
        lateness_ns.div_ceil(gap_ns.max(1)).saturating_add(1)
    }
}

/// Apply one value at `t` to a key's sessions (`all`: the slots, `stride` words each). The
/// sessions it reaches (starting no later than a gap after it, ending no earlier than a gap
/// before it) merge into one with it; none reached, it starts one, and when every slot is
/// used the oldest session goes (`session_slots`: no event that can still be applied reaches
/// it). An event older than every kept session with no slot free (only an event older than
/// its key's newest minus the lateness: a key that moved to a shard further behind, or
/// processing time's cross-shard disorder) counts in no session.
#[inline]
fn session_add(all: &mut [u64], stride: usize, gap: u64, f: Fields, t: u64, v: f64) {
    let slots = all.len() / stride;
    if slots == 1 {
        // No lateness: the same rule for one slot, without the search (7 ns an update
        // against 11: `session_update` in bench/micro/core_stages.rs).
        let (start, last, count) = (all[0], all[1], all[2]);
        if count == 0 || t > last.saturating_add(gap) {
            all.fill(0);
            all[0] = t;
            all[1] = t;
        } else if t.saturating_add(gap) < start {
            return;
        } else {
            all[0] = start.min(t);
            all[1] = last.max(t);
        }
        acc_add(&mut all[2..], f, v);
        return;
    }
    let start = |all: &[u64], i: usize| all[i * stride];
    let last = |all: &[u64], i: usize| all[i * stride + 1];
    let used = (0..slots).take_while(|&i| all[i * stride + 2] > 0).count();
    // The first session that does not end more than a gap before the event.
    let first = (0..used)
        .find(|&i| t <= last(all, i).saturating_add(gap))
        .unwrap_or(used);
    let end = first
        + (first..used)
            .take_while(|&i| start(all, i) <= t.saturating_add(gap))
            .count();
    if end > first {
        // Sessions first..end all reach the event: one session now.
        let new_last = last(all, end - 1).max(t);
        for i in first + 1..end {
            let mut acc = [0u64; 4];
            acc[..stride - 2].copy_from_slice(&all[i * stride + 2..(i + 1) * stride]);
            acc_merge(&mut all[first * stride + 2..(first + 1) * stride], f, &acc);
        }
        let s = &mut all[first * stride..(first + 1) * stride];
        s[0] = s[0].min(t);
        s[1] = new_last;
        acc_add(&mut s[2..], f, v);
        let gone = end - first - 1;
        if gone > 0 {
            all.copy_within(end * stride..used * stride, (first + 1) * stride);
            all[(used - gone) * stride..used * stride].fill(0);
        }
        return;
    }
    // A new session, at `first` in start order.
    let at = if used < slots {
        all.copy_within(first * stride..used * stride, (first + 1) * stride);
        first
    } else if first == 0 {
        return;
    } else {
        all.copy_within(stride..first * stride, 0);
        first - 1
    };
    let s = &mut all[at * stride..(at + 1) * stride];
    s.fill(0);
    s[0] = t;
    s[1] = t;
    acc_add(&mut s[2..], f, v);
}

/// Fold one accumulator (`src`, same fields) into another.
#[inline]
fn acc_merge(dst: &mut [u64], f: Fields, src: &[u64]) {
    if src[0] == 0 {
        return;
    }
    let first = dst[0] == 0;
    dst[0] += src[0];
    dst[1] = (f64::from_bits(dst[1]) + f64::from_bits(src[1])).to_bits();
    let pair = |dst: &[u64], i: usize| (f64::from_bits(dst[i]), f64::from_bits(src[i]));
    if f.min {
        let (d, s) = pair(dst, f.min_at());
        dst[f.min_at()] = if first { s } else { d.min(s) }.to_bits();
    }
    if f.max {
        let (d, s) = pair(dst, f.max_at());
        dst[f.max_at()] = if first { s } else { d.max(s) }.to_bits();
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
