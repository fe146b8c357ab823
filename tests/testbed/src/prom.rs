//! A reader of the Prometheus text exposition format (what `/metrics` answers), for tests that
//! assert exact values: samples with their labels (escapes undone), and sums over the
//! samples whose labels include a given set.
//!
//! ```text
//! let m = Exposition::parse(&body)?;
//! assert_eq!(m.sum("istio_tcp_connections_opened_total", &[("reporter", "source")]), 3.0);
//! ```

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// True when every `(key, value)` of `want` is among the sample's labels.
    pub fn has(&self, want: &[(&str, &str)]) -> bool {
        want.iter()
            .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }
}

/// Every sample of one scrape, and each family's `# TYPE`.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    pub types: BTreeMap<String, String>,
}

impl Exposition {
    /// Parses a whole exposition; the error names the line and what is wrong with it.
    pub fn parse(text: &str) -> Result<Exposition> {
        let mut out = Exposition::default();
        for (n, line) in text.lines().enumerate() {
            let bad =
                |why: &str| Error::Invalid(format!("metrics line {}: {why}: {line:?}", n + 1));
            let line = line.trim_end();
            if line.is_empty() || line == "# EOF" {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| bad("TYPE without a type"))?;
                out.types.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            out.samples
                .push(parse_sample(line).map_err(|why| bad(&why))?);
        }
        Ok(out)
    }

    /// The samples of `name` whose labels include `want`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        want: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && s.has(want))
    }

    /// The sum of `name`'s samples whose labels include `want` (0 when there is none).
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.matching(name, want).map(|s| s.value).sum()
    }

    /// The value of the one sample of `name` with labels including `want`; `None` when there is
    /// none or more than one.
    pub fn single(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.matching(name, want);
        let first = found.next()?;
        found.next().is_none().then_some(first.value)
    }
}

fn parse_sample(line: &str) -> std::result::Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("no metric name".into());
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        // After each label: ',' then the next, or '}'.
        let close = 'labels: loop {
            let mut key = String::new();
            loop {
                match chars.next() {
                    Some((i, '}')) if key.trim().is_empty() => break 'labels i,
                    Some((_, '=')) => break,
                    Some((_, ',')) if key.trim().is_empty() => {}
                    Some((_, c)) => key.push(c),
                    None => return Err("unterminated label set".into()),
                }
            }
            let key = key.trim().to_string();
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key} has no quoted value"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        other => return Err(format!("bad escape in label {key}: {other:?}")),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated value of label {key}")),
                }
            }
            labels.insert(key, value);
        };
        rest = &body[close + 1..];
    }
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .map_err(|_| format!("value {v:?} is not a number"))?,
    };
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_escaped_labels_and_without_labels() {
        let text = "# HELP a_total Something.\n# TYPE a_total counter\n\
                    a_total{x=\"1\",y=\"say \\\"hi\\\", a\\\\b\\nc\"} 3\n\
                    b 0.5\nc{} 7\n# EOF\n";
        let m = Exposition::parse(text).unwrap();
        assert_eq!(m.types["a_total"], "counter");
        assert_eq!(m.samples.len(), 3);
        assert_eq!(m.samples[0].labels["y"], "say \"hi\", a\\b\nc");
        assert_eq!(m.single("a_total", &[("x", "1")]), Some(3.0));
        assert_eq!(m.single("b", &[]), Some(0.5));
        assert_eq!(m.sum("c", &[]), 7.0);
        assert_eq!(m.sum("a_total", &[("x", "2")]), 0.0);
    }

    #[test]
    fn a_broken_line_is_named() {
        let err = Exposition::parse("ok 1\nbad{x=\"1\" 2\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("metrics line 2"), "{err}");
        let err = Exposition::parse("v notanumber\n").unwrap_err().to_string();
        assert!(err.contains("is not a number"), "{err}");
    }
}
