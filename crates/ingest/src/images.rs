//! Images: read, decode (pixels charged to the memory budget first), find near-duplicates,
//! OCR, queue the text for embedding.
//!
//! A near-duplicate is linked (`near_duplicate_of`, no OCR of its own) only when its pixels
//! are those of a stored image at a resolution that resolves text. The difference hash only
//! names candidates, through the store's band index. A candidate's original file is read
//! back (when it still exists with its recorded sha256) and both pages are compared tile by
//! tile ([`differing_tiles`]): no differing tile (re-saved, re-compressed) links at once; a
//! few differing tiles (a cursor, a changed digit) have the text bands through them OCRed
//! again, and the page is linked only when those bands read the same words as the stored
//! lines there. Anything else is OCRed whole.

use super::*;
use image::GrayImage;
use mnema_extract::image::{decode_bytes, dhash, differing_tiles, dimensions, prepare_for_ocr, DECODE_BYTES_PER_PIXEL};

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

/// A page that differs from a stored one in a few places: the strips (rows `y0..y1` of the
/// prepared page) to read again and the words the stored lines there hold.
struct Check {
    page: Page,
    from: i64,
    strips: Vec<(u32, u32)>,
    expected: Vec<String>,
}

/// What comparing a page with a stored candidate found.
enum Compared {
    Same,
    Few(Vec<(u32, u32)>, Vec<String>),
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
                        done(
                            Outcome {
                                path: path.to_path_buf(),
                                id: Some(it.id),
                                kind: Some(it.kind),
                                status: Status::Unchanged,
                                error: None,
                                chunks: 0,
                            },
                            out,
                        );
                    } else {
                        changed.push((*path, bytes, meta, sha));
                    }
                }
            }
        }
        // The pixels are charged before any is decoded: the prepared pages kept for the
        // batch, and the full decode of as many images as run at once.
        let pixels: Vec<u64> = changed.iter().map(|(_, b, _, _)| dimensions(b).map_or(0, |(w, h)| u64::from(w) * u64::from(h))).collect();
        // As many decode at once as the budget holds beside the kept pages (at least one).
        let largest = pixels.iter().copied().max().unwrap_or(0).max(1);
        let kept: u64 = pixels.iter().sum();
        let room = self.models.budget().saturating_sub(kept) / (largest * DECODE_BYTES_PER_PIXEL);
        let at_once = (rayon::current_num_threads() as u64).min(room).max(1) as usize;
        let _pixels = budget::reserve(self.models, "image decoding", kept + at_once as u64 * largest * DECODE_BYTES_PER_PIXEL)?;
        let mut decoded = Vec::with_capacity(changed.len());
        for group in changed.chunks(at_once) {
            let _s = stage("decode");
            decoded.par_extend(group.par_iter().map(|(path, bytes, _, _)| {
                decode_bytes(bytes, path.extension().and_then(|e| e.to_str()).unwrap_or("")).map(|img| {
                    let prepared = prepare_for_ocr(&img);
                    ((img.width(), img.height()), dhash(&img), prepared)
                })
            }));
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
                if let Some(o) = self.reuse(&item, twin.id)? {
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
                        if let Some(o) = self.reuse(&item, id)? {
                            done(o, out);
                            page = None;
                            break;
                        }
                    }
                    Compared::Few(strips, expected) => {
                        checks.push(Check { page: page.take().expect("kept until used"), from: id, strips, expected });
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
        let per = mnema_extract::ocr::engines_in(&self.config.models_dir).iter().find(|e| e.name == engine).map_or(80 << 20, |e| e.memory);
        // One engine per core, as many as the budget holds; the embedder is let go so it can
        // be evicted if OCR needs its room (it is reloaded for the text after).
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(todo.len() + checks.iter().map(|c| c.strips.len()).sum::<usize>())
            .min((self.models.budget() / per.max(1)).max(1) as usize);
        self.embedder = None;
        // The pool is cached by engine and worker count: a pool of one is never used as two.
        let pool = self.models.acquire(&format!("ocr:{engine}:{workers}"), per * workers as u64, || {
            let _s = stage("load-model");
            OcrPool::new(engine, &EngineOptions::with_models(&self.config.models_dir), workers)
        })?;
        // First the strips of the near-duplicates, so those that fail join the full pages.
        let strips: Vec<(GrayImage, f32)> = checks
            .iter()
            .flat_map(|c| {
                let (g, scale) = &c.page.prepared;
                c.strips.iter().map(move |&(y0, y1)| (image::imageops::crop_imm(g, 0, y0, g.width(), y1 - y0).to_image(), *scale))
            })
            .collect();
        let mut read = pool.recognize_all(&strips).into_iter();
        drop(strips);
        for mut c in checks {
            let lines: Vec<_> = read.by_ref().take(c.strips.len()).collect();
            let got = lines.iter().flat_map(|r| r.iter().flatten()).flat_map(|l| words(&l.text)).collect::<Vec<_>>();
            if lines.iter().all(Result::is_ok) && sorted(got) == sorted(std::mem::take(&mut c.expected)) {
                c.page.item.meta["near_duplicate_of"] = c.from.into();
                if let Some(o) = self.reuse(&c.page.item, c.from)? {
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
            match chunk_text(embedder.tokenizer(), &text, spec) {
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
        let px = dimensions(&bytes).map_or(0, |(w, h)| u64::from(w) * u64::from(h));
        if px != u64::from(page.0.width()) * u64::from(page.0.height()) {
            return Ok(Compared::Different);
        }
        let other = {
            let _pixels = budget::reserve(self.models, "image comparison", px * DECODE_BYTES_PER_PIXEL)?;
            let _s = stage("decode");
            match decode_bytes(&bytes, "") {
                Ok(img) => prepare_for_ocr(&img),
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
        let lines: Vec<(String, u32, u32)> = self
            .store
            .item(id)?
            .and_then(|it| it.meta.get("lines").and_then(|l| l.as_array()).cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|l| {
                let b = l.get("bbox")?.as_array()?;
                let (y, h) = (b.get(1)?.as_u64()? as f32, b.get(3)?.as_u64()? as f32);
                Some((l.get("text")?.as_str()?.to_string(), (y * page.1) as u32, ((y + h) * page.1).ceil() as u32))
            })
            .collect();
        let strips = strips(&tiles, &lines, page.0.height());
        let expected =
            lines.iter().filter(|(_, y0, y1)| strips.iter().any(|&(a, b)| *y0 < b && *y1 > a)).flat_map(|(t, _, _)| words(t)).collect();
        Ok(Compared::Few(strips, expected))
    }
}

/// The row ranges to read again: each differing tile's rows, padded, grown until no stored
/// line is cut, and merged where they meet.
fn strips(tiles: &[[u32; 4]], lines: &[(String, u32, u32)], height: u32) -> Vec<(u32, u32)> {
    let mut rows: Vec<(u32, u32)> = tiles.iter().map(|t| (t[1].saturating_sub(STRIP_PAD), (t[1] + t[3] + STRIP_PAD).min(height))).collect();
    loop {
        rows.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::new();
        for (a, b) in rows.iter().copied() {
            match merged.last_mut() {
                Some(m) if a <= m.1 => m.1 = m.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        let mut grown = false;
        for m in &mut merged {
            for (_, y0, y1) in lines {
                if *y0 < m.1 && *y1 > m.0 && (*y0 < m.0 + STRIP_PAD || *y1 + STRIP_PAD > m.1) {
                    let (a, b) = (y0.saturating_sub(STRIP_PAD).min(m.0), (y1 + STRIP_PAD).min(height).max(m.1));
                    grown |= (a, b) != *m;
                    *m = (a, b);
                }
            }
        }
        rows = merged;
        if !grown {
            return rows;
        }
    }
}

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
    fn strips_grow_to_whole_lines_and_merge() {
        let lines = vec![("Rate limit: 600".to_string(), 100, 130), ("Project".to_string(), 40, 70)];
        // A tile inside the first line: the strip covers the line and its padding.
        assert_eq!(strips(&[[64, 96, 32, 32]], &lines, 720), vec![(90, 136)]);
        // Two tiles in blank space far apart: two strips, no line.
        assert_eq!(strips(&[[0, 300, 32, 32], [0, 600, 32, 32]], &lines, 720), vec![(294, 338), (594, 638)]);
        assert_eq!(words("Rate limit: 600 req/min"), vec!["rate", "limit", "600", "req", "min"]);
        assert_eq!(words("Счёт № 17 | "), vec!["счёт", "17"]);
    }
}
