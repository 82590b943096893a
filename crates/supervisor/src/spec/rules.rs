//! `resourceRules`: what a service may not use for long, and what isola
//! does when it does — restart it (a graceful stop, then its restart
//! policy, with `lastExit.reason` `resource`) or only say so.
//!
//! ```json
//! "resourceRules": [
//!   {"metric": "memory", "above": "400M", "forMs": 30000, "action": "restart"},
//!   {"metric": "cpu", "above": "90%", "forMs": 30000, "action": "restart"},
//!   {"metric": "memoryPressure", "above": "20%", "forMs": 10000, "action": "event"}
//! ]
//! ```

use std::time::Duration;

use isola_runtime::SpecError;
use serde::Deserialize;
use serde_json::Value;

use super::field;

/// The longest `forMs`: a day.
const MAX_FOR_MS: u64 = 24 * 3600 * 1000;
/// The most CPU a rule may name: 1024 CPUs' worth.
pub(crate) const MAX_CPU_PERCENT: f64 = 102_400.0;

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RuleMetric {
    /// memory.current, bytes.
    Memory,
    /// CPU time over the last check, percent of one CPU.
    Cpu,
    /// PSI `some` avg10 of memory, cpu or io, percent.
    MemoryPressure,
    CpuPressure,
    IoPressure,
}

impl RuleMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleMetric::Memory => "memory",
            RuleMetric::Cpu => "cpu",
            RuleMetric::MemoryPressure => "memoryPressure",
            RuleMetric::CpuPressure => "cpuPressure",
            RuleMetric::IoPressure => "ioPressure",
        }
    }
}

/// What a rule does once its metric stayed above for `forMs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RuleAction {
    Restart,
    Event,
}

/// One rule: `metric` above `above` for `for_` → `action`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceRule {
    pub metric: RuleMetric,
    /// Bytes for `memory`, percent for the others.
    pub above: f64,
    /// As written (for messages).
    pub above_text: String,
    pub for_: Duration,
    pub action: RuleAction,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleJson {
    metric: RuleMetric,
    above: String,
    for_ms: u64,
    action: RuleAction,
}

/// `resourceRules`, when given; errors name the rule and the field.
pub fn parse(v: &Value, path: &str) -> Result<Vec<ResourceRule>, SpecError> {
    let raw: Vec<Value> = field(v, path)?;
    raw.iter()
        .enumerate()
        .map(|(k, r)| rule(r, &format!("{path}[{k}]")))
        .collect()
}

fn rule(v: &Value, path: &str) -> Result<ResourceRule, SpecError> {
    let r: RuleJson = field(v, path)?;
    let above = match r.metric {
        RuleMetric::Memory => {
            let bytes = isola_runtime::shorthand::parse_bytes(&format!("{path}.above"), &r.above)?;
            if bytes == 0 {
                return Err(SpecError::new(
                    format!("{path}.above"),
                    "0: must be above 0",
                ));
            }
            bytes as f64
        }
        RuleMetric::Cpu => percent(&r.above, MAX_CPU_PERCENT, &format!("{path}.above"))?,
        _ => percent(&r.above, 100.0, &format!("{path}.above"))?,
    };
    if !(1..=MAX_FOR_MS).contains(&r.for_ms) {
        return Err(SpecError::new(
            format!("{path}.forMs"),
            format!("{}: must be 1 to {MAX_FOR_MS} (a day)", r.for_ms),
        ));
    }
    Ok(ResourceRule {
        metric: r.metric,
        above,
        above_text: r.above,
        for_: Duration::from_millis(r.for_ms),
        action: r.action,
    })
}

/// `90%`: above 0, at most `max`.
pub(crate) fn percent(text: &str, max: f64, path: &str) -> Result<f64, SpecError> {
    let value = text
        .trim()
        .strip_suffix('%')
        .and_then(|n| n.trim().parse::<f64>().ok())
        .filter(|n| n.is_finite());
    match value {
        Some(p) if p > 0.0 && p <= max => Ok(p),
        Some(_) => Err(SpecError::new(
            path,
            format!("{text:?}: must be above 0% and at most {max}%"),
        )),
        None => Err(SpecError::new(
            path,
            format!("{text:?}: use a percentage (e.g. 90%)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: Value) -> Result<Vec<ResourceRule>, SpecError> {
        parse(&v, "services.web.resourceRules")
    }

    #[test]
    fn rules_parse() {
        let r = p(json!([
            {"metric": "memory", "above": "400M", "forMs": 30000, "action": "restart"},
            {"metric": "cpu", "above": "150%", "forMs": 1, "action": "event"},
            {"metric": "ioPressure", "above": "20%", "forMs": 10000, "action": "event"}
        ]))
        .unwrap();
        assert_eq!(r[0].above, 400.0 * 1024.0 * 1024.0);
        assert_eq!(r[0].for_, Duration::from_secs(30));
        assert_eq!(
            (r[1].metric, r[1].above, r[1].action),
            (RuleMetric::Cpu, 150.0, RuleAction::Event)
        );
        assert_eq!(r[2].metric, RuleMetric::IoPressure);
    }

    #[test]
    fn bad_rules_name_the_field_and_value() {
        let cases = [
            (
                json!([{"metric": "disk", "above": "1", "forMs": 1, "action": "event"}]),
                "services.web.resourceRules[0].metric",
                "disk",
            ),
            (
                json!([{"metric": "memory", "above": "lots", "forMs": 1, "action": "event"}]),
                "services.web.resourceRules[0].above",
                "lots",
            ),
            (
                json!([{"metric": "cpu", "above": "0%", "forMs": 1, "action": "event"}]),
                "services.web.resourceRules[0].above",
                "0%",
            ),
            (
                json!([{"metric": "memoryPressure", "above": "120%", "forMs": 1, "action": "event"}]),
                "services.web.resourceRules[0].above",
                "120%",
            ),
            (
                json!([{"metric": "cpu", "above": "90", "forMs": 1, "action": "event"}]),
                "services.web.resourceRules[0].above",
                "90",
            ),
            (
                json!([{"metric": "cpu", "above": "90%", "forMs": 0, "action": "event"}]),
                "services.web.resourceRules[0].forMs",
                "0",
            ),
            (
                json!([{"metric": "cpu", "above": "90%", "forMs": 86400001u64, "action": "event"}]),
                "services.web.resourceRules[0].forMs",
                "86400001",
            ),
            (
                json!([{"metric": "cpu", "above": "90%", "forMs": 5, "action": "explode"}]),
                "services.web.resourceRules[0].action",
                "explode",
            ),
            (
                json!([{"metric": "cpu", "above": "90%", "forMs": 5, "action": "event", "x": 1}]),
                "services.web.resourceRules[0].x",
                "unknown field",
            ),
        ];
        for (v, field, value) in cases {
            let e = p(v.clone()).unwrap_err();
            assert_eq!(e.field, field, "{v}: {e}");
            assert!(e.to_string().contains(value), "{v}: {e}");
        }
    }
}
