//! Where the text lines of a screenshot lie and which script each is written in, found from
//! the pixels before any recognition.
//!
//! Lines are horizontal bands of ink. A band's script is guessed from its glyph shapes: most
//! Latin lowercase letters rise above the x-height (b d f h k l t, the dots of i and j), few
//! Cyrillic ones do (б, ф, the marks of й and ё). Capitals and digits rise in both scripts,
//! so only clear cases get an answer; the rest stay unknown.

use image::GrayImage;

/// The two scripts told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Script {
    Latin,
    Cyrillic,
}

/// One text line: rows `top..bottom` of the image, and its script when the glyphs show it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Band {
    pub top: u32,
    pub bottom: u32,
    pub script: Option<Script>,
    /// Share of its glyphs that rise above the x-height; `None` with too few glyphs to judge.
    pub rising: Option<f64>,
}

impl Band {
    /// The likelier script when one must be chosen: the clear answer if there is one, else
    /// the nearer side of the undecided range, else `None`.
    pub fn likely(&self) -> Option<Script> {
        self.script.or(self.rising.map(|r| if r >= (LATIN_FROM + CYRILLIC_UPTO) / 2.0 { Script::Latin } else { Script::Cyrillic }))
    }
}

/// Share of glyphs rising above the x-height at or over which a line is Latin. Measured on
/// the OCR bench's 420 lines (DejaVu/Liberation, 13-40 px, both themes): Latin lines give
/// 0.07-0.47 (median 0.36), Cyrillic ones 0.04-0.21 (median 0.09). With these two limits,
/// 174 of the 210 Latin lines and 162 of the 210 Cyrillic ones get a script, and one Latin
/// line the wrong one.
const LATIN_FROM: f64 = 0.24;
/// Share at or under which a line is Cyrillic.
const CYRILLIC_UPTO: f64 = 0.16;

/// Pages larger than this (a 4K screen) are not analysed: their masks would cost more
/// memory than the engine's budget allows for, and they are read whole.
const MAX_PIXELS: usize = 9_000_000;

/// The page's text bands, top to bottom. The image is grey with dark text on a light ground
/// (`prepare_for_ocr` inverts dark themes); the ink is whichever side of Otsu's threshold
/// covers less of the page.
pub(super) fn bands(img: &GrayImage) -> Vec<Band> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 || w * h > MAX_PIXELS {
        return Vec::new();
    }
    let ink = ink_mask(img);
    let rows: Vec<bool> = (0..h).map(|y| ink[y * w..(y + 1) * w].iter().any(|&b| b)).collect();
    // Runs of inked rows; a run much shorter than its neighbour and close to it (the dots of
    // i and ё, an accent) belongs to that neighbour's line.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut y = 0;
    while y < h {
        if rows[y] {
            let start = y;
            while y < h && rows[y] {
                y += 1;
            }
            runs.push((start, y));
        } else {
            y += 1;
        }
    }
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for run in runs {
        if let Some(last) = merged.last_mut() {
            let (hl, hr, gap) = (last.1 - last.0, run.1 - run.0, run.0 - last.1);
            if (hl * 2 < hr || hr * 2 < hl) && gap * 2 <= hl.min(hr).max(2) * 3 {
                last.1 = run.1;
                continue;
            }
        }
        merged.push(run);
    }
    merged
        .into_iter()
        .map(|(top, bottom)| {
            let rising = rising_share(&ink[top * w..bottom * w], w, bottom - top);
            let script = rising.and_then(|r| {
                if r >= LATIN_FROM {
                    Some(Script::Latin)
                } else if r <= CYRILLIC_UPTO {
                    Some(Script::Cyrillic)
                } else {
                    None
                }
            });
            Band { top: top as u32, bottom: bottom as u32, script, rising }
        })
        .collect()
}

/// Ink pixels of the page (Otsu's threshold, ink on the smaller side).
fn ink_mask(img: &GrayImage) -> Vec<bool> {
    let mut hist = [0u64; 256];
    for &p in img.as_raw() {
        hist[p as usize] += 1;
    }
    let total = img.as_raw().len() as f64;
    let sum_all: f64 = hist.iter().enumerate().map(|(i, &c)| i as f64 * c as f64).sum();
    let (mut below, mut sum_below, mut best, mut threshold) = (0f64, 0f64, -1f64, 127u8);
    for (t, &c) in hist.iter().enumerate() {
        below += c as f64;
        sum_below += t as f64 * c as f64;
        if below == 0.0 || below == total {
            continue;
        }
        let (m0, m1) = (sum_below / below, (sum_all - sum_below) / (total - below));
        let between = below * (total - below) * (m0 - m1) * (m0 - m1);
        if between > best {
            best = between;
            threshold = t as u8;
        }
    }
    let dark: u64 = hist[..=threshold as usize].iter().sum();
    let ink_is_dark = dark as f64 <= total / 2.0;
    img.as_raw().iter().map(|&p| (p <= threshold) == ink_is_dark).collect()
}

/// The share of one band's glyphs (`ink` is its `w`×`h` mask) whose top lies clearly above
/// the x-height line; `None` when there are too few glyphs to tell.
fn rising_share(ink: &[bool], w: usize, h: usize) -> Option<f64> {
    // Connected glyphs (8-neighbour): top row, bottom row, pixel count.
    let mut seen = vec![false; ink.len()];
    let mut glyphs: Vec<(usize, usize, usize)> = Vec::new();
    let mut stack = Vec::new();
    for start in 0..ink.len() {
        if !ink[start] || seen[start] {
            continue;
        }
        let (mut top, mut bottom, mut n) = (usize::MAX, 0, 0);
        seen[start] = true;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (y, x) = (i / w, i % w);
            top = top.min(y);
            bottom = bottom.max(y);
            n += 1;
            for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    let j = ny * w + nx;
                    if ink[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        if n >= 2 {
            glyphs.push((top, bottom, n));
        }
    }
    if glyphs.len() < 8 {
        return None;
    }
    // Most glyphs end on the baseline. Of those standing on it, at least a third are
    // x-height letters in either script, so the lowest tops mark the x-height line.
    let mut bottoms: Vec<usize> = glyphs.iter().map(|g| g.1).collect();
    bottoms.sort_unstable();
    let baseline = bottoms[bottoms.len() / 2];
    let mut tops: Vec<usize> = glyphs.iter().filter(|g| g.1.abs_diff(baseline) <= 1 + h / 20).map(|g| g.0).collect();
    if tops.len() < 6 {
        return None;
    }
    tops.sort_unstable_by(|a, b| b.cmp(a));
    let xline = tops[tops.len() * 3 / 10];
    let xheight = baseline.saturating_sub(xline);
    // A text line is about twice its x-height tall (ascenders to descenders); a taller band
    // is a picture, a rule or several lines run together, and says nothing about script.
    if xheight < 3 || h > 4 * xheight {
        return None;
    }
    let xheight = xheight as f64;
    let rising = glyphs.iter().filter(|g| (g.0 as f64) < xline as f64 - 0.18 * xheight).count();
    Some(rising as f64 / glyphs.len() as f64)
}

/// Splitting a page pays when reading it whole would switch script at least this often.
/// Read whole, each switch costs a second reading of one line (Tesseract tries the last
/// line's language first); split, the Latin half costs one (it starts in Russian) plus a
/// second pass over the page, about one more.
const SPLIT_FROM_SWITCHES: usize = 3;

/// Which bands to read as a separate Latin page (`true`), when splitting the page pays;
/// `None` to read it whole. Reading starts in Russian; bands of unclear script neither count
/// as switches nor break a run, and when split they go to the likelier side, or the
/// majority's when too short to judge.
pub(super) fn latin_split(bands: &[Band]) -> Option<Vec<bool>> {
    let switches = bands.iter().filter_map(|b| b.script).fold((Script::Cyrillic, 0), |(prev, n), s| (s, n + usize::from(s != prev))).1;
    if switches < SPLIT_FROM_SWITCHES {
        return None;
    }
    let count = |s: Script| bands.iter().filter(|b| b.likely() == Some(s)).count();
    let latin_majority = count(Script::Latin) > count(Script::Cyrillic);
    Some(bands.iter().map(|b| b.likely().map_or(latin_majority, |s| s == Script::Latin)).collect())
}

/// The page as two copies: the first shows only the bands `latin` leaves unmarked, the
/// second only the marked ones; each hides the other's bands under the page's background
/// (the median grey).
pub(super) fn halves(img: &GrayImage, bands: &[Band], latin: &[bool]) -> [GrayImage; 2] {
    let mut values: Vec<u8> = img.as_raw().iter().step_by(7).copied().collect();
    let mid = values.len() / 2;
    let ground = if values.is_empty() { 255 } else { *values.select_nth_unstable(mid).1 };
    let w = img.width() as usize;
    let mut out = [img.clone(), img.clone()];
    for (b, &is_latin) in bands.iter().zip(latin) {
        out[usize::from(!is_latin)].as_mut()[b.top as usize * w..b.bottom as usize * w].fill(ground);
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::process::Command;

    /// A 1280-wide page drawn by ImageMagick, one text line per entry, as `prepare_for_ocr`
    /// would hand it over.
    pub(in crate::ocr) fn page(lines: &[&str], size: u32, font: &str, dark: bool) -> GrayImage {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("page.png");
        let (bg, fg) = if dark { ("#1e1e1e", "#dcdcdc") } else { ("white", "#111111") };
        let mut c = Command::new("convert");
        c.args(["-size", "1280x400", &format!("xc:{bg}"), "-font", font, "-pointsize", &size.to_string(), "-fill", fg]);
        for (i, l) in lines.iter().enumerate() {
            c.args(["-annotate", &format!("+30+{}", 20 + size as usize + i * size as usize * 2), l]);
        }
        assert!(c.arg(&path).status().expect("ImageMagick's convert").success());
        crate::image::prepare_for_ocr(&image::open(&path).unwrap(), crate::image::Preprocess::DEFAULT).0
    }

    #[test]
    fn lines_are_found_and_their_scripts_told_apart() {
        let lines = [
            "Отменить подписку можно в настройках",
            "Search by meaning and by words",
            "Встреча перенесена на четверг",
            "Weather tomorrow: sunny, 21 degrees",
        ];
        for (size, font, dark) in [(16, "DejaVu-Sans", false), (24, "Liberation-Serif", true), (32, "Liberation-Sans", false)] {
            let bands = bands(&page(&lines, size, font, dark));
            assert_eq!(bands.len(), 4, "{font} {size}px: {bands:?}");
            // A guess may stay open (a line of capitals and digits looks alike in both
            // scripts), but it is never the wrong script, and most lines get one.
            let truth = [Script::Cyrillic, Script::Latin, Script::Cyrillic, Script::Latin];
            assert!(bands.iter().zip(truth).all(|(b, t)| b.script.is_none_or(|s| s == t)), "{font} {size}px: {bands:?}");
            assert!(bands.iter().filter(|b| b.script.is_some()).count() >= 3, "{font} {size}px: {bands:?}");
            // Bands are ordered, disjoint and cover each line's ink (ascenders to descenders).
            for pair in bands.windows(2) {
                assert!(pair[0].bottom < pair[1].top);
            }
            assert!(bands.iter().all(|b| b.bottom - b.top >= size / 2 && b.bottom - b.top <= size * 2), "{bands:?}");
        }
    }

    #[test]
    fn dots_and_accents_stay_with_their_line() {
        // A line whose only tall glyphs are ё/й marks and i dots must stay one band.
        let bands = bands(&page(&["ёжик и йогурт", "mini jeu"], 28, "DejaVu-Sans", false));
        assert_eq!(bands.len(), 2, "{bands:?}");
    }

    #[test]
    fn too_little_to_judge_is_unknown() {
        let bands = bands(&page(&["42", "Ok"], 20, "DejaVu-Sans", false));
        assert!(bands.iter().all(|b| b.script.is_none()), "{bands:?}");
        assert!(super::bands(&GrayImage::new(0, 0)).is_empty());
        assert!(super::bands(&GrayImage::from_pixel(50, 20, image::Luma([255]))).is_empty());
    }

    fn band(script: Option<Script>, rising: Option<f64>) -> Band {
        Band { top: 0, bottom: 1, script, rising }
    }

    #[test]
    fn pages_are_split_only_when_scripts_alternate() {
        let (c, l) = (band(Some(Script::Cyrillic), Some(0.05)), band(Some(Script::Latin), Some(0.35)));
        // Alternating lines: five switches read whole, so the Latin ones go apart.
        let page = [c.clone(), l.clone(), c.clone(), l.clone(), c.clone(), l.clone()];
        assert_eq!(latin_split(&page), Some(vec![false, true, false, true, false, true]));
        // One English line in a Russian page, or an English page: read whole.
        assert_eq!(latin_split(&[c.clone(), c.clone(), l.clone(), c.clone()]), None);
        assert_eq!(latin_split(&[l.clone(), l.clone(), l.clone()]), None);
        // Unclear lines do not count as switches...
        let (near_latin, short) = (band(None, Some(0.22)), band(None, None));
        assert_eq!(latin_split(&[c.clone(), near_latin.clone(), c.clone(), short.clone(), c.clone()]), None);
        // ...and when the page is split they go to the nearer side, or the majority's.
        let page = [c.clone(), l.clone(), near_latin, c.clone(), l.clone(), short, l.clone()];
        assert_eq!(latin_split(&page), Some(vec![false, true, true, false, true, true, true]));
    }

    #[test]
    fn hidden_bands_take_the_background() {
        let img = page(&["Встреча перенесена на четверг", "Search by meaning and by words"], 24, "DejaVu-Sans", false);
        let bands = bands(&img);
        let marks: Vec<bool> = bands.iter().map(|b| b.script == Some(Script::Latin)).collect();
        let [_, latin] = halves(&img, &bands, &marks);
        let w = img.width() as usize;
        let (first, second) = (&bands[0], &bands[1]);
        assert!(latin.as_raw()[first.top as usize * w..first.bottom as usize * w].iter().all(|&p| p > 200), "the Cyrillic line is gone");
        assert_eq!(
            latin.as_raw()[second.top as usize * w..second.bottom as usize * w],
            img.as_raw()[second.top as usize * w..second.bottom as usize * w]
        );
    }
}
