//! Markdown escaping shared by `report` (report.md) and `compare` (compare.md).

/// A table cell: pipes and line breaks would end the cell or the table.
pub fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '|' => out.push_str("\\|"),
            '\\' => out.push_str("\\\\"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\r' => {}
            '\n' => out.push_str("<br>"),
            c => out.push(c),
        }
    }
    out
}

/// `text` in a fenced code block whose fence no line of `text` can close.
pub fn fenced(text: &str, info: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    let body = text.strip_suffix('\n').unwrap_or(text);
    format!("{fence}{info}\n{body}\n{fence}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_keep_the_table_intact() {
        assert_eq!(cell("a|b\nc"), "a\\|b<br>c");
        assert_eq!(cell("<x> & \\"), "&lt;x&gt; &amp; \\\\");
    }

    #[test]
    fn fences_outlast_backticks_in_the_text() {
        assert_eq!(fenced("plain\n", "text"), "```text\nplain\n```\n");
        let tricky = "before\n```\nstill inside ````\n";
        let block = fenced(tricky, "");
        assert!(block.starts_with("`````\n") && block.ends_with("\n`````\n"), "{block}");
    }
}
