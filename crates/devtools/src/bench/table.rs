//! The results table and the statistics behind it (pure: no I/O).

use std::fmt::Write as _;

/// One line of the results: a measured figure, its baseline measured in the same run, their
/// ratio and the target the ratio (or the figure) must meet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub measurement: String,
    pub value: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    /// `yes`, `NO`, or empty when the row has no target or the build is not a release one.
    pub met: String,
}

impl Row {
    pub fn new(measurement: impl Into<String>, value: impl Into<String>) -> Self {
        Row {
            measurement: measurement.into(),
            value: value.into(),
            ..Row::default()
        }
    }

    pub fn baseline(mut self, baseline: impl Into<String>, ratio: f64) -> Self {
        self.baseline = baseline.into();
        self.ratio = format!("{ratio:.2}x");
        self
    }

    /// A target and whether it was met; the verdict is left out of debug builds, whose
    /// figures say nothing.
    pub fn target(mut self, target: impl Into<String>, met: bool) -> Self {
        self.target = target.into();
        if !cfg!(debug_assertions) {
            self.met = if met { "yes" } else { "NO" }.into();
        }
        self
    }
}

const HEADERS: [&str; 6] = ["measurement", "value", "baseline", "ratio", "target", "met"];

/// The rows as a Markdown table, columns padded so it also reads well in a terminal.
pub fn render(rows: &[Row]) -> String {
    let cells: Vec<[&str; 6]> = rows
        .iter()
        .map(|row| {
            [
                row.measurement.as_str(),
                row.value.as_str(),
                row.baseline.as_str(),
                row.ratio.as_str(),
                row.target.as_str(),
                row.met.as_str(),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(|header| header.chars().count());
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 6]| {
        out.push('|');
        for (cell, width) in cells.iter().zip(widths) {
            let _ = write!(out, " {cell:<width$} |");
        }
        out.push('\n');
    };
    line(HEADERS);
    let dashes = widths.map(|width| "-".repeat(width));
    line(dashes.each_ref().map(String::as_str));
    for cells in cells {
        line(cells);
    }
    out
}

/// The median of the values (the mean of the middle two for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The median of `figure` over `items`.
pub fn median_of<T>(items: &[T], figure: impl Fn(&T) -> f64) -> f64 {
    median(&items.iter().map(figure).collect::<Vec<_>>())
}

/// The `p`-th percentile (0–100) by the nearest-rank method; 0 when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `12345.6` → `12,346`: whole numbers with thousands separators.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if value < -0.5 {
        grouped.insert(0, '-');
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(
            median_of(&[("a", 3.0), ("b", 1.0), ("c", 2.0)], |pair| pair.1),
            2.0
        );
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 100.0);
        assert_eq!(percentile(&values, 99.0), 198.0);
        assert_eq!(percentile(&values, 100.0), 200.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1000.0), "-1,000");
    }

    #[test]
    fn the_table_pads_every_column_to_its_widest_cell() {
        let rows = [
            Row::new("push", "12,000 ev/s").baseline("1,000 ev/s", 12.0),
            Row::new("a longer measurement", "1"),
        ];
        let table = render(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("| measurement          | value       |"));
        assert!(lines[2].contains("| 12.00x |"));
        assert!(lines.iter().all(|line| line.len() == lines[0].len()));
    }
}
