//! Checks on names and texts that come from peers before they become paths, log lines or page text. Part of
//! [`crate::protocol`].

use super::MAX_NAME;

/// Checks the name of an [`super::ExtraOutput`] before it becomes a path under the job's render folder: relative, plain
/// `/`-separated components, at most 8 deep and 1024 bytes, an image extension, and not shaped like a frame file
/// (`0012.png`) or the host's own hidden files.
pub fn check_output_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 1024 {
        return Err("empty or over 1024 bytes");
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 8 {
        return Err("more than 8 folders deep");
    }
    for part in &parts {
        if part.is_empty() || *part == "." || *part == ".." || part.starts_with('.') || part.len() > 255 {
            return Err("an empty, hidden, '.' or '..' component");
        }
        if part.chars().any(|c| c == '\\' || c == '\0' || c.is_control()) {
            return Err("a backslash, NUL or control character");
        }
    }
    let first_stem = parts[0].split('.').next().unwrap_or_default();
    if first_stem.bytes().all(|b| b.is_ascii_digit()) {
        return Err("named like a frame file");
    }
    let last = parts[parts.len() - 1];
    let ext = last.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    if !is_frame_extension(&ext) {
        return Err("not an image file extension");
    }
    Ok(())
}

/// A name a peer announced, made safe to show in logs, terminals and HTML: control characters, quotes and angle
/// brackets dropped, whitespace runs made one space, at most [`MAX_NAME`] bytes. `None` when nothing is left.
pub fn display_name(name: &str) -> Option<String> {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_control() || c.is_whitespace() {
            if !out.is_empty() && !out.ends_with(' ') {
                out.push(' ');
            }
        } else if !matches!(c, '<' | '>' | '"' | '\'' | '&' | '`' | '\\') {
            out.push(c);
        }
    }
    let mut out = out.trim().to_string();
    truncate_utf8(&mut out, MAX_NAME);
    (!out.is_empty()).then_some(out)
}

/// A text from a peer (an error report, a refusal's reason, a job name it claims) made safe for one log line: trimmed,
/// newlines, tabs and other control characters escaped (`\n`, `\t`, `\u{1b}`), as are the invisible characters
/// that reorder or hide text (bidi overrides, zero-width and line/paragraph separators); at most `max` bytes, cut at
/// a character boundary and ending with `…` when cut. Printable text, non-ASCII included, is kept as it is.
pub fn one_line(text: &str, max: usize) -> String {
    const ELLIPSIS: &str = "…";
    let keep = max.saturating_sub(ELLIPSIS.len());
    let mut out = String::new();
    // Where the text is cut if it turns out longer than `max`: after the last whole piece that fits beside `…`.
    let mut cut = None;
    let mut piece = String::new();
    for c in text.trim().chars() {
        piece.clear();
        match c {
            '\n' => piece.push_str("\\n"),
            '\r' => piece.push_str("\\r"),
            '\t' => piece.push_str("\\t"),
            c if c.is_control() || hides_text(c) => piece.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => piece.push(c),
        }
        if cut.is_none() && out.len() + piece.len() > keep {
            cut = Some(out.len());
        }
        out.push_str(&piece);
        if out.len() > max {
            break;
        }
    }
    match cut {
        Some(at) if out.len() > max => {
            out.truncate(at);
            out.push_str(ELLIPSIS);
            out
        }
        _ => out,
    }
}

/// Format and separator characters that change how a line reads without showing themselves.
fn hides_text(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// Frame file extensions an owner accepts from a volunteer: image formats Blender writes. Anything else is refused,
/// so a peer can never choose a path outside the job's folder.
pub const FRAME_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "exr", "tif", "tiff", "bmp", "tga", "webp", "jp2", "j2c", "hdr", "dpx", "cin", "rgb", "sgi",
];

pub fn is_frame_extension(ext: &str) -> bool {
    FRAME_EXTENSIONS.contains(&ext)
}

/// Cuts `text` to at most `max` bytes on a character boundary, for texts bound by a limit above.
pub fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn peer_text_becomes_one_escaped_line() {
        let table = [
            ("disk full", "disk full"),
            ("  boom\n", "boom"),
            ("boom\nfinished: 12 frames", "boom\\nfinished: 12 frames"),
            ("a\r\nb\tc", "a\\r\\nb\\tc"),
            ("\u{1b}[31mred", "\\u{1b}[31mred"),
            ("evil\u{202e}gnp.exe", "evil\\u{202e}gnp.exe"),
            ("line\u{2028}sep", "line\\u{2028}sep"),
            ("café ✓", "café ✓"),
            ("", ""),
        ];
        for (text, want) in table {
            assert_eq!(one_line(text, 100), want, "{text:?}");
        }
    }

    #[test]
    fn long_text_is_cut_at_a_char_boundary_with_an_ellipsis() {
        let cut = one_line(&"é".repeat(100), 21);
        assert_eq!(cut, format!("{}…", "é".repeat(9)));
        assert!(cut.len() <= 21);
        // An escape is never cut in half.
        let cut = one_line(&"x\n".repeat(10), 9);
        assert_eq!(cut, "x\\nx\\n…");
        // Exactly `max` bytes is not cut.
        assert_eq!(one_line("abcde", 5), "abcde");
        assert_eq!(one_line("abcdef", 5), "ab…");
        // A huge text costs no more than its first `max` bytes.
        assert_eq!(one_line(&"x".repeat(10_000_000), 10).len(), 10);
    }
}
