//! Images: read, decode (pixels charged to the memory budget first), find near-duplicates,
//! OCR, queue the text for embedding.
//!
//! A near-duplicate is linked (`near_duplicate_of`, no OCR of its own) only when its pixels
//! are those of a stored image at a resolution that resolves text. The difference hash only
//! names candidates, through the store's band index. A candidate's original file is read
//! back (when it still exists with its recorded sha256) and both pages are compared tile by
//! tile ([`differing_tiles`]): no differing tile (re-saved, re-compressed) links at once.
//! A few differing tiles (a cursor, a changed digit) are read again: every stored line they
//! touch, in its box, must read the same words as stored; every region they cover where no
//! line was must read no text (at most a few low-confidence letters: a pointer). Anything
//! else is OCRed whole.

use super::*;
use image::GrayImage;
use mnema_extract::image::{decode_bytes, decode_cost, dhash, differing_tiles, prepare_for_ocr, DecodeCost, Preprocess};

/// Hashes within this many bits are near-duplicate candidates.
const NEAR_BITS: u32 = 4;
/// Candidates whose pixels are compared, nearest hash first.
const MAX_CANDIDATES: usize = 3;
/// Share of a page's tiles that may differ and still be checked band by band (beyond it the
/// page is OCRed whole).
const MAX_DIFFERING_SHARE: f64 = 0.05;
/// Rows added above and below a differing region before it is read again.
const STRIP_PAD: u32 = 6;

/// An image decoded and prepared for OCR, with its item.
struct Page {
    item: NewItem,
    prepared: (GrayImage, f32),
}

/// A place where a page differs from a stored one, to read again: a stored line's box (the
/// words it must still read) or a region where no line was (it must still read no word).
struct Verify {
    rect: [u32; 4],
    words: Option<Vec<String>>,
}

/// A page that differs from a stored one in a few places.
struct Check {
    page: Page,
    from: i64,
    /// The candidate's content when compared: the copy is taken only if it still holds it.
    from_sha256: String,
    places: Vec<Verify>,
}

/// What comparing a page with a stored candidate found.
enum Compared {
    Same,
    Few(Vec<Verify>),
    Different,
}

impl Ingester<'_> {
    /// Reads, decodes and OCRs a batch of images on all cores, queueing their text for
    /// embedding. Returns the images deferred until this batch is stored (their hash is near
    /// one in the batch: they may be its near-duplicates).
    pub(crate) fn images<'p>(
        &mut self,
        batch: &[&'p PathBuf],
        pending: &mut Vec<Pending>,
        out: &mut Vec<Outcome>,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<Vec<&'p PathBuf>, IngestError> {
        let mut deferred = Vec::new();
        let mut batch_hashes: Vec<u64> = Vec::new();
        let mut done = |o: Outcome, out: &mut Vec<Outcome>| {
            progress(Progress::File(&o));
            out.push(o);
        };
        // Reading and hashing, then decoding, run on all cores; the store is consulted in
        // between so unchanged files are never decoded.
        let read: Vec<Result<ReadFile, String>> = batch
            .par_iter()
            .map(|path| {
                read_file(path, MAX_IMAGE_FILE).map(|(bytes, meta)| {
                    let sha = mnema_models::catalog::hex(&Sha256::digest(&bytes));
                    (bytes, meta, sha)
                })
            })
            .collect();
        let mut changed = Vec::new();
        for (path, r) in batch.iter().zip(read) {
            match r {
                Err(e) => done(Outcome::failed(path.to_path_buf(), Some(Kind::Image), e), out),
                Ok((bytes, meta, sha)) => {
                    let path_str = path.to_string_lossy().into_owned();
                    if let Some(it) = self.store.item_by_path(&path_str)?.filter(|it| it.sha256 == sha) {
                        done(Outcome::unchanged(path, &it), out);
                    } else {
                        changed.push((*path, bytes, meta, sha));
                    }
                }
            }
        }
        // The pixels are charged before any is decoded: the prepared pages kept for the
        // batch, and the full decode of as many images as run at once.
        let costs: Vec<DecodeCost> = changed.iter().map(|(_, b, _, _)| decode_cost(b).unwrap_or_default()).collect();
        // An image that cannot be decoded within the whole budget is refused on its own. The
        // rest are taken while their prepared pages plus the largest decode fit; the others go
        // back to the queue for the next batch (the first image of a batch always fits).
        let budget = self.models.budget();
        let steps = Preprocess::from_setting(&self.config.ocr_preprocess);
        let mut kept_changed = Vec::with_capacity(changed.len());
        let (mut kept_pages, mut kept_largest) = (0u64, 0u64);
        for (c, cost) in changed.into_iter().zip(costs) {
            let page = cost.page_bytes(steps);
            if let Some(reason) = cost.refusal(steps, budget) {
                done(Outcome::failed(c.0.to_path_buf(), Some(Kind::Image), reason), out);
            } else if !kept_changed.is_empty() && kept_pages + page + kept_largest.max(cost.bytes) > budget {
                deferred.push(c.0);
            } else {
                kept_pages += page;
                kept_largest = kept_largest.max(cost.bytes);
                kept_changed.push(c);
            }
        }
        let mut changed = kept_changed;
        // The embedder is let go first, so the budget can evict it for the pixels and the OCR
        // engines (it is reloaded for the text after).
        self.embedder = None;
        // As many decode at once as the budget holds beside the kept pages (at least one).
        let largest = kept_largest.max(1);
        let kept = kept_pages;
        let room = budget.saturating_sub(kept) / largest;
        let at_once = (rayon::current_num_threads() as u64).min(room).max(1) as usize;
        // The prepared pages stay charged until the batch is read; the full decodes only while
        // they run, so the comparisons and the OCR engines get that room back.
        let _pages = budget::reserve(self.models, "prepared pages", kept)?;
        let mut decoded = Vec::with_capacity(changed.len());
        {
            let _decoding = budget::reserve(self.models, "image decoding", at_once as u64 * largest)?;
            for group in changed.chunks(at_once) {
                let _s = stage("decode");
                decoded.par_extend(group.par_iter().map(|(path, bytes, _, _)| {
                    decode_bytes(bytes, path.extension().and_then(|e| e.to_str()).unwrap_or("")).map(|img| {
                        let prepared = prepare_for_ocr(&img, steps);
                        ((img.width(), img.height()), dhash(&img), prepared)
                    })
                }));
            }
        }
        for c in &mut changed {
            c.1 = Vec::new();
        }
        let mut todo: Vec<Page> = Vec::new();
        let mut checks: Vec<Check> = Vec::new();
        for ((path, _bytes, meta, sha), d) in changed.into_iter().zip(decoded) {
            let path_str = path.to_string_lossy().into_owned();
            let ((width, height), hash, prepared) = match d {
                Ok(x) => x,
                Err(e) => {
                    done(Outcome::failed(path.to_path_buf(), Some(Kind::Image), e.to_string()), out);
                    continue;
                }
            };
            let mut item = NewItem {
                path: path_str.clone(),
                kind: Kind::Image,
                sha256: sha.clone(),
                size: meta.len(),
                mtime: mtime(&meta),
                meta: serde_json::json!({ "width": width, "height": height, "dhash": format!("{hash:016x}") }),
            };
            // The same bytes: the same text.
            if let Some(twin) = self.store.item_by_content(&sha, Kind::Image, &path_str)? {
                if let Some(o) = self.reuse(&item, twin.id, &twin.sha256)? {
                    done(o, out);
                    continue;
                }
            }
            let mut page = Some(Page { item: item.clone(), prepared });
            for (id, cand_path, cand_sha, _) in self.store.image_candidates(hash, NEAR_BITS, &path_str)?.into_iter().take(MAX_CANDIDATES) {
                let p = page.as_ref().expect("kept until used");
                match self.compare(&p.prepared, id, &cand_path, &cand_sha)? {
                    Compared::Same => {
                        item.meta["near_duplicate_of"] = id.into();
                        if let Some(o) = self.reuse(&item, id, &cand_sha)? {
                            done(o, out);
                            page = None;
                            break;
                        }
                    }
                    Compared::Few(places) => {
                        checks.push(Check { page: page.take().expect("kept until used"), from: id, from_sha256: cand_sha, places });
                        break;
                    }
                    Compared::Different => {}
                }
            }
            let Some(page) = page else { continue };
            if batch_hashes.iter().any(|h| (h ^ hash).count_ones() <= NEAR_BITS) {
                deferred.push(path);
                continue;
            }
            batch_hashes.push(hash);
            todo.push(page);
        }
        if todo.is_empty() && checks.is_empty() {
            return Ok(deferred);
        }
        let engine = "tesseract";
        let rt = mnema_extract::Runtime::from_config(self.config);
        let per = mnema_extract::ocr::engines_in(&rt).iter().find(|e| e.name == engine).map_or(80 << 20, |e| e.memory);
        // One engine per core, as many as the budget holds beside the pixels reserved; the embedder is let go so it can
        // be evicted if OCR needs its room (it is reloaded for the text after).
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(todo.len() + checks.iter().map(|c| c.places.len()).sum::<usize>())
            .min((self.models.budget().saturating_sub(self.models.reserved()) / per.max(1)).max(1) as usize);
        self.embedder = None;
        // The pool is cached by engine and worker count: a pool of one is never used as two.
        let pool = self.models.acquire(&format!("ocr:{engine}:{workers}"), per * workers as u64, || {
            let _s = stage("load-model");
            OcrPool::new(engine, &EngineOptions::new(&rt), workers)
        })?;
        // First the changed places of the near-duplicates, so pages that fail join the rest.
        let crops: Vec<(GrayImage, f32)> = checks
            .iter()
            .flat_map(|c| {
                let (g, scale) = &c.page.prepared;
                c.places.iter().map(move |v| {
                    let [x, y, w, h] = v.rect;
                    (image::imageops::crop_imm(g, x, y, w, h).to_image(), *scale)
                })
            })
            .collect();
        let mut read = pool.recognize_all(&crops).into_iter();
        drop(crops);
        for mut c in checks {
            tracing::debug!("{}: {} changed place(s) read again", c.page.item.path, c.places.len());
            let same = c.places.iter().all(|v| match read.next() {
                Some(Ok(lines)) => match &v.words {
                    Some(expected) => sorted(lines.iter().flat_map(|l| words(&l.text)).collect()) == sorted(expected.clone()),
                    None => lines.iter().all(is_noise),
                },
                _ => false,
            });
            if same {
                c.page.item.meta["near_duplicate_of"] = c.from.into();
                if let Some(o) = self.reuse(&c.page.item, c.from, &c.from_sha256)? {
                    done(o, out);
                    continue;
                }
                if let Some(m) = c.page.item.meta.as_object_mut() {
                    m.remove("near_duplicate_of");
                }
            }
            todo.push(c.page);
        }
        let (items, pages): (Vec<NewItem>, Vec<(GrayImage, f32)>) = todo.into_iter().map(|p| (p.item, p.prepared)).unzip();
        let results = pool.recognize_all(&pages);
        drop(pages);
        drop(pool);
        let spec = ChunkSpec { max_tokens: self.config.chunk_tokens, overlap: self.config.chunk_overlap };
        for (mut item, r) in items.into_iter().zip(results) {
            let lines = match r {
                Ok(l) => l,
                Err(e) => {
                    done(Outcome::failed(PathBuf::from(&item.path), Some(Kind::Image), e.to_string()), out);
                    continue;
                }
            };
            // Each line with its byte range in the joined text, so hits can point at boxes.
            let mut at = 0;
            let line_meta: Vec<serde_json::Value> = lines
                .iter()
                .map(|l| {
                    let v = serde_json::json!({ "text": l.text, "bbox": l.bbox, "conf": l.conf, "start": at, "end": at + l.text.len() });
                    at += l.text.len() + 1;
                    v
                })
                .collect();
            item.meta["engine"] = engine.into();
            item.meta["lines"] = line_meta.into();
            let text = join_lines(&lines);
            if text.trim().is_empty() {
                // No text (a photo): kept, so it is not OCRed again, but nothing to search.
                done(self.store_textless(&item)?, out);
                continue;
            }
            let embedder = self.embedder()?;
            match chunk_text(embedder.tokens(), &text, spec) {
                Ok(chunks) => pending.push(Pending { item, chunks }),
                Err(e) => done(Outcome::failed(PathBuf::from(&item.path), Some(Kind::Image), e.to_string()), out),
            }
        }
        Ok(deferred)
    }

    /// Compares a prepared page with stored image `id`, whose original is read back from
    /// `path` if it still holds the content recorded (`sha`).
    fn compare(&mut self, page: &(GrayImage, f32), id: i64, path: &str, sha: &str) -> Result<Compared, IngestError> {
        let Ok(bytes) = read_file(Path::new(path), MAX_IMAGE_FILE).map(|(b, _)| b) else { return Ok(Compared::Different) };
        if mnema_models::catalog::hex(&Sha256::digest(&bytes)) != sha {
            return Ok(Compared::Different);
        }
        let cost = decode_cost(&bytes).unwrap_or_default();
        if cost.pixels != u64::from(page.0.width()) * u64::from(page.0.height()) {
            return Ok(Compared::Different);
        }
        let other = {
            // Beside the batch's pages this may not fit (an earlier image of the same size but
            // a wider sample format): then the two are treated as different, and the page is
            // read by OCR instead of failing the run.
            // (No wait: idle models are evicted, memory in use is not waited for.)
            let Ok(_pixels) = self.models.reserve("image comparison", cost.bytes) else { return Ok(Compared::Different) };
            let _s = stage("decode");
            match decode_bytes(&bytes, "") {
                Ok(img) => prepare_for_ocr(&img, Preprocess::from_setting(&self.config.ocr_preprocess)),
                Err(_) => return Ok(Compared::Different),
            }
        };
        if other.1 != page.1 {
            return Ok(Compared::Different);
        }
        let Some(tiles) = differing_tiles(&page.0, &other.0) else { return Ok(Compared::Different) };
        if tiles.is_empty() {
            return Ok(Compared::Same);
        }
        let all = (page.0.width().div_ceil(mnema_extract::image::TILE) * page.0.height().div_ceil(mnema_extract::image::TILE)) as f64;
        if tiles.len() as f64 > MAX_DIFFERING_SHARE * all {
            return Ok(Compared::Different);
        }
        // The stored lines, in the prepared page's pixels.
        let scale = page.1;
        let lines: Vec<(String, [u32; 4])> = self
            .store
            .item(id)?
            .and_then(|it| it.meta.get("lines").and_then(|l| l.as_array()).cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|l| {
                let b: Vec<f32> = l.get("bbox")?.as_array()?.iter().map(|v| v.as_u64().map(|v| v as f32 * scale)).collect::<Option<_>>()?;
                let text = l.get("text")?.as_str()?.to_string();
                (b.len() == 4).then(|| (text, [b[0] as u32, b[1] as u32, (b[0] + b[2]).ceil() as u32, (b[1] + b[3]).ceil() as u32]))
            })
            .collect();
        Ok(Compared::Few(places(&tiles, &lines, page.0.dimensions())))
    }
}

/// What to read again where `tiles` differ: each stored line (`text`, `[x0, y0, x1, y1]`) a
/// differing tile touches, in its padded box; and each group of touching differing tiles that
/// touches no line, padded.
fn places(tiles: &[[u32; 4]], lines: &[(String, [u32; 4])], (w, h): (u32, u32)) -> Vec<Verify> {
    let pad = |[x0, y0, x1, y1]: [u32; 4]| {
        let (x0, y0) = (x0.saturating_sub(STRIP_PAD), y0.saturating_sub(STRIP_PAD));
        let (x1, y1) = ((x1 + STRIP_PAD).min(w), (y1 + STRIP_PAD).min(h));
        [x0, y0, x1.max(x0 + 1), y1.max(y0 + 1)]
    };
    let meets = |a: [u32; 4], b: [u32; 4]| a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3];
    let mut touched = vec![false; lines.len()];
    let mut blank: Vec<[u32; 4]> = Vec::new();
    for t in tiles {
        let r = [t[0], t[1], t[0] + t[2], t[1] + t[3]];
        let mut hit = false;
        for (i, (_, b)) in lines.iter().enumerate() {
            if meets(r, pad(*b)) {
                touched[i] = true;
                hit = true;
            }
        }
        if !hit {
            blank.push(r);
        }
    }
    // Differing tiles that touch (share an edge or a corner) make one region.
    let mut merged = true;
    while merged {
        merged = false;
        'outer: for i in 0..blank.len() {
            for j in i + 1..blank.len() {
                let (a, b) = (blank[i], blank[j]);
                if a[0] <= b[2] && b[0] <= a[2] && a[1] <= b[3] && b[1] <= a[3] {
                    blank[i] = [a[0].min(b[0]), a[1].min(b[1]), a[2].max(b[2]), a[3].max(b[3])];
                    blank.swap_remove(j);
                    merged = true;
                    break 'outer;
                }
            }
        }
    }
    let rect = |r: [u32; 4]| {
        let [x0, y0, x1, y1] = pad(r);
        [x0, y0, x1 - x0, y1 - y0]
    };
    let mut out: Vec<Verify> =
        lines.iter().zip(&touched).filter(|(_, t)| **t).map(|((text, b), _)| Verify { rect: rect(*b), words: Some(words(text)) }).collect();
    out.extend(blank.into_iter().map(|r| Verify { rect: rect(r), words: None }));
    out
}

/// Whether a line read where no text was is noise rather than text: no letter or digit, or
/// at most [`NOISE_LETTERS`] letters (no digit) read with low confidence: a pointer or a caret
/// read as glyphs (a mouse pointer reads as "Хх" at 45%). A digit, a longer word, or letters
/// read with confidence are text, and the page is OCRed whole.
fn is_noise(l: &mnema_extract::ocr::OcrLine) -> bool {
    let letters: String = words(&l.text).concat();
    letters.is_empty() || (letters.chars().count() <= NOISE_LETTERS && !letters.chars().any(char::is_numeric) && l.conf < NOISE_CONF)
}

/// Most letters a noise line may have.
const NOISE_LETTERS: usize = 3;
/// Confidence under which a few letters read where no text was count as noise.
const NOISE_CONF: f32 = 60.0;

/// A line's words for comparison: runs of letters and digits, lowercased (punctuation and a
/// stray cursor glyph do not count; a changed digit does).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_places_are_whole_lines_or_blank_regions() {
        let lines = vec![("Rate limit: 600".to_string(), [48, 100, 300, 130]), ("Project".to_string(), [48, 40, 200, 70])];
        // A tile over the first line: that line's padded box, with its words.
        let p = places(&[[224, 96, 32, 32]], &lines, (1280, 720));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].rect, [42, 94, 264, 42]);
        assert_eq!(p[0].words, Some(vec!["rate".to_string(), "limit".into(), "600".into()]));
        // Two touching tiles in blank space: one region that must read no word.
        let p = places(&[[896, 288, 32, 32], [896, 320, 32, 32]], &lines, (1280, 720));
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].rect, p[0].words.is_none()), ([890, 282, 44, 76], true));
        assert_eq!(words("Rate limit: 600 req/min"), vec!["rate", "limit", "600", "req", "min"]);
        assert_eq!(words("Счёт № 17 | "), vec!["счёт", "17"]);
    }
}
