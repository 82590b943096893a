//! The two text formats a Prometheus scraper reads, written by hand: the
//! Prometheus text format 0.0.4 (what `promtool check metrics` lints, and
//! what a scraper gets unless it asks for more) and OpenMetrics 1.0 (what
//! Prometheus asks for: counters as families without `_total`, their
//! `_created` time, `# EOF`).

use std::fmt::Write;

/// Which text a scraper gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `text/plain; version=0.0.4`.
    Text,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// As the client libraries choose: OpenMetrics when the `Accept`
    /// header names it, the text format otherwise.
    pub(crate) fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// What a family counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Gauge,
    /// Its samples end in `_total` (the family's name does not, in
    /// OpenMetrics).
    Counter,
}

/// A label set, in order.
pub(crate) type Labels<'a> = &'a [(&'a str, &'a str)];

/// One exposition being written.
pub(crate) struct Exposition {
    format: Format,
    out: String,
}

impl Exposition {
    pub(crate) fn new(format: Format) -> Exposition {
        Exposition {
            format,
            out: String::new(),
        }
    }

    /// Start family `name` (without `_total`): its HELP and TYPE.
    pub(crate) fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind_name = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let declared = match (self.format, kind) {
            (Format::Text, Kind::Counter) => format!("{name}_total"),
            _ => name.to_string(),
        };
        let _ = writeln!(self.out, "# HELP {declared} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {declared} {kind_name}");
    }

    /// A gauge's sample.
    pub(crate) fn gauge(&mut self, name: &str, labels: Labels<'_>, value: f64) {
        self.sample(name, "", labels, value);
    }

    /// A counter's sample; `created` (epoch seconds) is when it last
    /// started from zero, for counters that restart with a run.
    pub(crate) fn counter(
        &mut self,
        name: &str,
        labels: Labels<'_>,
        value: f64,
        created: Option<f64>,
    ) {
        self.sample(name, "_total", labels, value);
        if let (Format::OpenMetrics, Some(t)) = (self.format, created) {
            self.sample(name, "_created", labels, t);
        }
    }

    fn sample(&mut self, name: &str, suffix: &str, labels: Labels<'_>, value: f64) {
        self.out.push_str(name);
        self.out.push_str(suffix);
        if !labels.is_empty() {
            self.out.push('{');
            for (k, (key, val)) in labels.iter().enumerate() {
                if k > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape_label(val));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        write_value(&mut self.out, value);
        self.out.push('\n');
    }

    /// The text, ended as its format wants.
    pub(crate) fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

/// Integers as integers; the rest as Rust prints them (both formats read
/// Go's float syntax, which that is a subset of).
fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{v:.0}");
    } else {
        let _ = write!(out, "{v}");
    }
}

fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(format: Format) -> String {
        let mut e = Exposition::new(format);
        e.family("isola_service_restarts", Kind::Counter, "Restarts.");
        e.counter(
            "isola_service_restarts",
            &[("service", "web")],
            3.0,
            Some(1.5e9),
        );
        e.family(
            "isola_service_up",
            Kind::Gauge,
            "1 when it runs.\nSecond line \\ here.",
        );
        e.gauge("isola_service_up", &[("service", "a\"b\\c\nd")], 1.0);
        e.gauge("isola_service_up", &[], 0.25);
        e.finish()
    }

    #[test]
    fn the_text_format() {
        assert_eq!(
            write(Format::Text),
            "# HELP isola_service_restarts_total Restarts.\n\
             # TYPE isola_service_restarts_total counter\n\
             isola_service_restarts_total{service=\"web\"} 3\n\
             # HELP isola_service_up 1 when it runs.\\nSecond line \\\\ here.\n\
             # TYPE isola_service_up gauge\n\
             isola_service_up{service=\"a\\\"b\\\\c\\nd\"} 1\n\
             isola_service_up 0.25\n"
        );
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let text = write(Format::OpenMetrics);
        assert!(text.starts_with(
            "# HELP isola_service_restarts Restarts.\n\
             # TYPE isola_service_restarts counter\n\
             isola_service_restarts_total{service=\"web\"} 3\n\
             isola_service_restarts_created{service=\"web\"} 1500000000\n"
        ));
        assert!(text.ends_with("isola_service_up 0.25\n# EOF\n"), "{text}");
    }

    #[test]
    fn the_accept_header_chooses() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Text);
        assert_eq!(Format::from_accept(None), Format::Text);
    }
}
