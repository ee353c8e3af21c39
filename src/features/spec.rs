//! The feature language of `features.list`: one expression per model input, in order.
//!
//! ```text
//! expr   := value                       raw event field: amount | feature[i]
//!         | since_last                  seconds since the key's previous event
//!         | count(window)               Observations in the window
//!         | sum|mean|min|max(value, window)
//!         | ewma(value, alpha)          per-Observation EWMA, 0 < alpha <= 1
//!         | ratio(expr, expr)           a / b, or 1 when |b| is ~0
//!         | log1p(expr)                 ln(1 + max(x, 0))
//! window := lifetime | tumbling DUR | sliding DUR by DUR | session DUR
//! DUR    := integer + ms | s | m | h    e.g. 300s, 5m
//! ```
//!
//! Parsing happens once at startup; errors name the entry and what was expected.

use crate::limits::{FEATURES_INLINE_MAX, WINDOW_BUCKETS_MAX};

/// An event field a feature reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Value {
    Amount,
    Feature(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    Lifetime,
    Tumbling { size_ns: u64 },
    Sliding { size_ns: u64, step_ns: u64 },
    Session { gap_ns: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Agg {
    Count,
    Sum,
    Mean,
    Min,
    Max,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Raw(Value),
    SinceLast,
    Agg {
        agg: Agg,
        value: Value,
        window: Window,
    },
    Ewma {
        value: Value,
        alpha: f64,
    },
    Ratio(Box<Expr>, Box<Expr>),
    Log1p(Box<Expr>),
}

pub fn parse(text: &str) -> Result<Expr, String> {
    let mut p = Parser {
        src: text,
        pos: 0,
        depth: 0,
    };
    let e = p.expr()?;
    p.skip_ws();
    if p.pos != p.src.len() {
        return Err(format!("unexpected {:?} at column {}", p.rest(), p.pos + 1));
    }
    Ok(e)
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

/// Nesting allowed in one expression (ratio of log1p of ...): enough for any sensible feature.
const DEPTH_MAX: usize = 8;

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn skip_ws(&mut self) {
        let r = self.rest();
        self.pos += r.len() - r.trim_start().len();
    }

    fn word(&mut self) -> &'a str {
        self.skip_ws();
        let r = self.rest();
        let n = r
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(r.len());
        self.pos += n;
        &r[..n]
    }

    fn eat(&mut self, c: char) -> Result<(), String> {
        self.skip_ws();
        if self.rest().starts_with(c) {
            self.pos += c.len_utf8();
            Ok(())
        } else {
            Err(format!(
                "expected '{c}' at column {}, found {:?}",
                self.pos + 1,
                self.rest()
            ))
        }
    }

    fn peek(&mut self, c: char) -> bool {
        self.skip_ws();
        self.rest().starts_with(c)
    }

    fn expr(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > DEPTH_MAX {
            return Err(format!("nested deeper than {DEPTH_MAX} levels"));
        }
        let name = self.word();
        let e = match name {
            "" => return Err(format!("expected a feature at column {}", self.pos + 1)),
            "amount" => Expr::Raw(Value::Amount),
            "feature" => Expr::Raw(self.feature_index()?),
            "since_last" => {
                if self.peek('(') {
                    self.eat('(')?;
                    self.eat(')')?;
                }
                Expr::SinceLast
            }
            "count" => {
                self.eat('(')?;
                let window = self.window()?;
                self.eat(')')?;
                Expr::Agg {
                    agg: Agg::Count,
                    value: Value::Amount,
                    window,
                }
            }
            "sum" | "mean" | "min" | "max" => {
                let agg = match name {
                    "sum" => Agg::Sum,
                    "mean" => Agg::Mean,
                    "min" => Agg::Min,
                    _ => Agg::Max,
                };
                self.eat('(')?;
                let value = self.value()?;
                self.eat(',')?;
                let window = self.window()?;
                self.eat(')')?;
                Expr::Agg { agg, value, window }
            }
            "ewma" => {
                self.eat('(')?;
                let value = self.value()?;
                self.eat(',')?;
                let a = self.word();
                let alpha: f64 = a
                    .parse()
                    .map_err(|_| format!("ewma alpha {a:?} is not a number"))?;
                if !(alpha > 0.0 && alpha <= 1.0) {
                    return Err(format!("ewma alpha {alpha} must be in (0, 1]"));
                }
                self.eat(')')?;
                Expr::Ewma { value, alpha }
            }
            "ratio" => {
                self.eat('(')?;
                let a = self.expr()?;
                self.eat(',')?;
                let b = self.expr()?;
                self.eat(')')?;
                Expr::Ratio(Box::new(a), Box::new(b))
            }
            "log1p" => {
                self.eat('(')?;
                let a = self.expr()?;
                self.eat(')')?;
                Expr::Log1p(Box::new(a))
            }
            other => {
                return Err(format!(
                    "unknown feature {other:?} (expected amount, feature[i], since_last, count, sum, mean, min, max, ewma, ratio or log1p)"
                ))
            }
        };
        self.depth -= 1;
        Ok(e)
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.word() {
            "amount" => Ok(Value::Amount),
            "feature" => self.feature_index(),
            other => Err(format!("expected amount or feature[i], found {other:?}")),
        }
    }

    fn feature_index(&mut self) -> Result<Value, String> {
        self.eat('[')?;
        let w = self.word();
        let i: usize = w
            .parse()
            .map_err(|_| format!("feature index {w:?} is not an integer"))?;
        if i >= FEATURES_INLINE_MAX {
            return Err(format!(
                "feature[{i}]: events carry at most {FEATURES_INLINE_MAX} features (0..{})",
                FEATURES_INLINE_MAX - 1
            ));
        }
        self.eat(']')?;
        Ok(Value::Feature(i as u8))
    }

    fn duration(&mut self) -> Result<u64, String> {
        let w = self.word();
        let split = w.find(|c: char| !c.is_ascii_digit()).unwrap_or(w.len());
        let (num, unit) = w.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("duration {w:?}: expected e.g. 500ms, 30s, 5m or 1h"))?;
        let scale: u64 = match unit {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("duration {w:?}: unit must be ms, s, m or h")),
        };
        match n.checked_mul(scale) {
            Some(ns) if ns > 0 => Ok(ns),
            _ => Err(format!(
                "duration {w:?} must be positive and under ~584 years"
            )),
        }
    }

    fn window(&mut self) -> Result<Window, String> {
        match self.word() {
            "lifetime" => Ok(Window::Lifetime),
            "tumbling" => Ok(Window::Tumbling {
                size_ns: self.duration()?,
            }),
            "session" => Ok(Window::Session {
                gap_ns: self.duration()?,
            }),
            "sliding" => {
                let size_ns = self.duration()?;
                if self.word() != "by" {
                    return Err("sliding windows are written `sliding SIZE by STEP`".into());
                }
                let step_ns = self.duration()?;
                if size_ns % step_ns != 0 {
                    return Err("sliding window size must be a multiple of its step".into());
                }
                let buckets = size_ns / step_ns;
                if buckets as usize > WINDOW_BUCKETS_MAX {
                    return Err(format!(
                        "sliding window has {buckets} buckets (size / step); at most {WINDOW_BUCKETS_MAX}"
                    ));
                }
                Ok(Window::Sliding { size_ns, step_ns })
            }
            other => Err(format!(
                "expected a window (lifetime, tumbling DUR, sliding DUR by DUR, session DUR), found {other:?}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(parse("amount").unwrap(), Expr::Raw(Value::Amount));
        assert_eq!(parse(" feature[3] ").unwrap(), Expr::Raw(Value::Feature(3)));
        assert_eq!(parse("since_last()").unwrap(), Expr::SinceLast);
        assert_eq!(
            parse("sum(amount, sliding 5m by 30s)").unwrap(),
            Expr::Agg {
                agg: Agg::Sum,
                value: Value::Amount,
                window: Window::Sliding {
                    size_ns: 300_000_000_000,
                    step_ns: 30_000_000_000
                }
            }
        );
        assert_eq!(
            parse("log1p(count(session 30m))").unwrap(),
            Expr::Log1p(Box::new(Expr::Agg {
                agg: Agg::Count,
                value: Value::Amount,
                window: Window::Session {
                    gap_ns: 1_800_000_000_000
                }
            }))
        );
        assert!(matches!(
            parse("ratio(amount, ewma(feature[1], 0.25))").unwrap(),
            Expr::Ratio(_, b) if *b == Expr::Ewma { value: Value::Feature(1), alpha: 0.25 }
        ));
        assert!(matches!(
            parse("max(amount, tumbling 500ms)").unwrap(),
            Expr::Agg {
                agg: Agg::Max,
                window: Window::Tumbling {
                    size_ns: 500_000_000
                },
                ..
            }
        ));
    }

    #[test]
    fn refuses_with_a_reason() {
        for (text, needle) in [
            ("", "expected a feature"),
            ("amount amount", "unexpected"),
            ("median(amount, lifetime)", "unknown feature \"median\""),
            ("feature[16]", "at most 16"),
            ("sum(amount)", "expected ','"),
            ("sum(amount, sliding 5m by 7s)", "multiple of its step"),
            ("sum(amount, sliding 1h by 1s)", "buckets"),
            ("count(tumbling 5x)", "unit must be"),
            ("count(tumbling 0s)", "positive"),
            ("ewma(amount, 1.5)", "(0, 1]"),
            ("count(forever)", "expected a window"),
            (
                "log1p(log1p(log1p(log1p(log1p(log1p(log1p(log1p(amount))))))))",
                "nested",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
