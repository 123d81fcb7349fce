//! Text rendering of case reports: one line per case, a readable expected-vs-actual diff on
//! failure, and with `--trace` every stage call with its input and result and every host
//! call with its time.

use std::fmt::Write as _;

use crate::runner::{CallReport, CaseReport, RunReport, StageReport};

/// The line (and, on failure, the diff; with `trace`, the trace) for one case.
pub fn render_case(report: &CaseReport, trace: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}",
        if report.passed { "ok  " } else { "FAIL" },
        report.name
    );
    if !report.passed {
        let _ = writeln!(out, "     at {}:{}", report.file, report.line);
        for m in &report.mismatches {
            let _ = writeln!(out, "     {}", m.at);
            push_block(&mut out, "expected: ", &m.expected);
            push_block(&mut out, "actual:   ", &m.actual);
        }
    }
    if trace {
        if let Some(e) = &report.load_error {
            let _ = writeln!(out, "     load error: {e}");
        }
        for run in &report.runs {
            render_run(&mut out, run);
        }
    }
    out
}

/// `label` then the first line of `text`; later lines aligned under it.
fn push_block(out: &mut String, label: &str, text: &str) {
    let pad = " ".repeat(label.len());
    for (i, line) in text.lines().enumerate() {
        let _ = writeln!(
            out,
            "       {}{line}",
            if i == 0 { label } else { pad.as_str() }
        );
    }
}

fn render_run(out: &mut String, run: &RunReport) {
    let _ = writeln!(out, "     {} (clock {} ms)", run.label, run.clock_ms);
    for s in &run.stages {
        render_stage(out, s);
    }
    if run.kv.is_empty() {
        let _ = writeln!(out, "       kv after: (empty)");
    } else {
        let _ = writeln!(out, "       kv after:");
        for (k, v) in &run.kv {
            let _ = writeln!(out, "         {k} = {v:?}");
        }
    }
}

fn render_stage(out: &mut String, s: &StageReport) {
    let _ = writeln!(out, "       {} {}", s.stage, s.input);
    let mut result = match (&s.verdict, &s.route) {
        (Some(v), _) => v.to_string(),
        (None, Some(r)) => r.clone(),
        (None, None) => "-".into(),
    };
    if let Some(r) = &s.rewrite {
        let _ = write!(result, ", rewrite to <{r}>");
    }
    if let Some(q) = &s.quarantine {
        let _ = write!(result, ", quarantine {q:?}");
    }
    if s.calls.is_empty() {
        let _ = writeln!(out, "         => {result} (no plugin asked for this stage)");
        return;
    }
    let _ = writeln!(out, "         => {result}");
    for e in &s.edits {
        let _ = writeln!(out, "         edit: {e}");
    }
    if let Some(h) = &s.headers_after {
        let _ = writeln!(out, "         headers after the edits:");
        for line in h.lines() {
            let _ = writeln!(out, "           | {line}");
        }
    }
    for c in &s.calls {
        render_call(out, c);
    }
}

fn render_call(out: &mut String, c: &CallReport) {
    let _ = writeln!(
        out,
        "         {} {}: {} [{}]",
        c.plugin,
        c.stage,
        c.outcome,
        duration(c.elapsed_us)
    );
    if let Some(f) = &c.failure {
        let _ = writeln!(
            out,
            "           failure ({}): {f}",
            c.failure_kind.map_or("?".into(), |k| k.to_string())
        );
    }
    for h in &c.host_calls {
        let result = if h.result.is_empty() {
            String::new()
        } else {
            format!(" -> {}", h.result)
        };
        let _ = writeln!(
            out,
            "           {} {}{result} [{}]",
            h.call,
            h.args,
            duration(h.elapsed_us)
        );
    }
}

fn duration(us: u64) -> String {
    if us >= 1000 {
        format!("{:.2} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

/// The closing line: exactly `N passed, N failed`.
pub fn summary(passed: usize, failed: usize) -> String {
    format!("{passed} passed, {failed} failed")
}
