//! Layering: embedded defaults < config file < `--set` overrides, with every unknown key and
//! every type mismatch collected before deserialisation.

use toml::{Table, Value};

use super::ConfigError;

/// The embedded defaults; `sluice print-config` shows them.
pub const DEFAULTS_TOML: &str = include_str!("defaults.toml");

/// The merged table and every problem found on the way. A refused key or value keeps its
/// default, so the later stages (serde, validation, the machine checks) still run and report
/// their own problems in the same pass.
pub(super) fn merge(
    file_text: Option<&str>,
    sets: &[String],
) -> Result<(Table, Table, Vec<String>), ConfigError> {
    let mut merged: Table = DEFAULTS_TOML
        .parse()
        .map_err(|e| ConfigError::one(format!("embedded defaults do not parse (a bug): {e}")))?;
    let defaults = merged.clone();
    let mut problems = Vec::new();

    if let Some(text) = file_text {
        match text.parse::<Table>() {
            Ok(file) => overlay_table(&mut merged, &defaults, file, "", &mut problems),
            Err(e) => problems.push(format!("config file is not valid TOML: {}", e.message())),
        }
    }
    for set in sets {
        match parse_set(set) {
            Ok((path, value)) => set_path(&mut merged, &defaults, &path, value, &mut problems),
            Err(p) => problems.push(p),
        }
    }
    Ok((merged, defaults, problems))
}

/// `a.b.c=value`: the value is read as TOML when it parses (numbers, booleans, arrays) and as a
/// bare string otherwise, so `--set ingest.udp.driver=recvmmsg` needs no quotes.
fn parse_set(set: &str) -> Result<(Vec<String>, Value), String> {
    let Some((key, raw)) = set.split_once('=') else {
        return Err(format!("--set {set:?}: expected section.key=value"));
    };
    let path: Vec<String> = key.trim().split('.').map(str::to_owned).collect();
    if path.iter().any(String::is_empty) {
        return Err(format!("--set {set:?}: empty key segment"));
    }
    let raw = raw.trim();
    let value = format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()));
    Ok((path, value))
}

fn set_path(
    merged: &mut Table,
    defaults: &Table,
    path: &[String],
    value: Value,
    problems: &mut Vec<String>,
) {
    // Build a one-key table and reuse the file overlay so both report the same way.
    let mut nested = value;
    for segment in path.iter().rev() {
        let mut t = Table::new();
        t.insert(segment.clone(), nested);
        nested = Value::Table(t);
    }
    if let Value::Table(t) = nested {
        overlay_table(merged, defaults, t, "", problems);
    }
}

/// Tables whose keys are passed through to librdkafka: any key is accepted (the client
/// library checks it when the client is built, and start-up reports its refusal).
const PASSTHROUGH_TABLES: [&str; 2] = ["kafka.consumer", "kafka.producer"];

/// Overlay a pass-through table: every scalar becomes a string property; a nested table is
/// flattened with dots, so `--set kafka.consumer.fetch.wait.max.ms=5` and
/// `"fetch.wait.max.ms" = "5"` mean the same.
fn overlay_passthrough(merged: &mut Table, src: Table, prefix: &str, problems: &mut Vec<String>) {
    for (key, value) in src {
        let value = match value {
            Value::String(s) => s,
            Value::Integer(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Boolean(b) => b.to_string(),
            Value::Table(t) => {
                let flat: Table = t
                    .into_iter()
                    .map(|(k, v)| (format!("{key}.{k}"), v))
                    .collect();
                overlay_passthrough(merged, flat, prefix, problems);
                continue;
            }
            other => {
                problems.push(format!(
                    "{prefix}.{key} must be a string, number or boolean (a librdkafka property), found {}",
                    other.type_str()
                ));
                continue;
            }
        };
        merged.insert(key, Value::String(value));
    }
}

fn overlay_table(
    merged: &mut Table,
    defaults: &Table,
    src: Table,
    prefix: &str,
    problems: &mut Vec<String>,
) {
    if PASSTHROUGH_TABLES.contains(&prefix) {
        overlay_passthrough(merged, src, prefix, problems);
        return;
    }
    for (key, value) in src {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let Some(default) = defaults.get(&key) else {
            let known: Vec<&str> = defaults.keys().map(String::as_str).collect();
            problems.push(format!(
                "unknown key {path} (known here: {})",
                known.join(", ")
            ));
            continue;
        };
        match (default, value) {
            (Value::Table(dt), Value::Table(st)) => {
                if let Some(Value::Table(mt)) = merged.get_mut(&key) {
                    overlay_table(mt, dt, st, &path, problems);
                }
            }
            (Value::Table(_), other) => problems.push(format!(
                "{path} must be a table, found {}",
                other.type_str()
            )),
            (default, value) => match coerce(default, value) {
                Ok(v) => {
                    merged.insert(key, v);
                }
                Err(found) => problems.push(format!(
                    "{path} must be {}, found {found}",
                    describe(default)
                )),
            },
        }
    }
}

/// Accept the default's type; integers are fine where a float is expected. Every integer
/// setting is a size, count or id, so negative integers are refused here too.
fn coerce(default: &Value, value: Value) -> Result<Value, String> {
    match (default, value) {
        (Value::Integer(_), Value::Integer(i)) if i < 0 => Err(format!("the negative integer {i}")),
        (Value::Float(_), Value::Integer(i)) => Ok(Value::Float(i as f64)),
        // `start = 2026-12-01T00:00:00Z` unquoted is a TOML datetime: its text, for the key's
        // own parse to judge (only a time-valued key takes it).
        (Value::String(_), Value::Datetime(d)) => Ok(Value::String(d.to_string())),
        (Value::Array(d), Value::Array(items)) => {
            let elem = d.first();
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match elem {
                    Some(e) => out.push(coerce(e, item).map_err(|f| format!("an array of {f}"))?),
                    None => match item {
                        Value::Integer(i) if i < 0 => return Err(format!("an array holding {i}")),
                        Value::Integer(_) => out.push(item),
                        other => return Err(format!("an array of {}", other.type_str())),
                    },
                }
            }
            Ok(Value::Array(out))
        }
        (d, v) if std::mem::discriminant(d) == std::mem::discriminant(&v) => Ok(v),
        (_, v) => Err(format!("{} {v}", v.type_str())),
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "a non-negative integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "true or false",
        Value::Array(_) => "an array",
        Value::Datetime(_) => "a datetime",
        Value::Table(_) => "a table",
    }
}
