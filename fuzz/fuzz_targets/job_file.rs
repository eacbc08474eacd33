//! A job file's text, as `load_job_file` hands it to `parse_job_text` (UTF-8, at most `MAX_JOB_FILE_BYTES`). A job
//! that parses must respect every limit the scheduler relies on; every error must print.
#![no_main]

use std::path::Path;

use blenderdist::host::jobfile::{parse_job_text, MAX_FPS, MAX_FRAME, MAX_JOB_FILE_BYTES, MAX_JOB_FRAMES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() as u64 > MAX_JOB_FILE_BYTES {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_job_text("fuzz", text, Path::new("/jobs")) {
        Ok(job) => {
            assert!(job.first <= job.last && job.last <= MAX_FRAME, "{job:?}");
            assert!(job.last - job.first < MAX_JOB_FRAMES, "{job:?}");
            assert!(job.blend.is_absolute());
            if let Some(notify) = &job.notify {
                assert!(!notify.is_empty() && !notify.chars().any(|c| c.is_control() && c != '\t'), "{notify:?}");
            }
            if let Some(fps) = job.fps {
                assert!(fps.num > 0 && fps.den > 0 && fps.as_f64() <= f64::from(MAX_FPS), "{fps:?}");
                let _ = fps.to_string();
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
