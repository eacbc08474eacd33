//! Table-driven tests of the job-file parser (split from jobfile.rs).

use super::*;
use JobFileError as E;
use VideoFormat::Mp4;

/// Text, then either (blend, first, last, priority) or a part of the message, which must name the culprit.
type Case = (&'static str, Result<(&'static str, u32, u32, i32), &'static str>);
#[rustfmt::skip]
const CASES: &[Case] = &[
    ("a.blend\n1\n250\n", Ok(("/j/a.blend", 1, 250, 0))),
    ("a.blend\n1\n250", Ok(("/j/a.blend", 1, 250, 0))),
    ("a.blend\r\n1\r\n250\r\npriority = 2\r\n", Ok(("/j/a.blend", 1, 250, 2))),
    ("\u{feff}a.blend\n1\n250\n", Ok(("/j/a.blend", 1, 250, 0))),
    ("  a.blend \t\n 1\n\t250  \n", Ok(("/j/a.blend", 1, 250, 0))),
    ("a.blend\n1\n250\n\n  \n\r\n", Ok(("/j/a.blend", 1, 250, 0))),
    ("/abs/b.blend\n0\n0\n", Ok(("/abs/b.blend", 0, 0, 0))),
    ("sub/c.blend\n5\n5\n", Ok(("/j/sub/c.blend", 5, 5, 0))),
    ("a.blend\n48575\n1048574\n", Ok(("/j/a.blend", 48_575, MAX_FRAME, 0))),
    ("a.blend\n1\n1000000\n", Ok(("/j/a.blend", 1, 1_000_000, 0))),
    ("a.blend\n007\n010\n", Ok(("/j/a.blend", 7, 10, 0))),
    ("a.blend\n1\n2\npriority=10", Ok(("/j/a.blend", 1, 2, 10))),
    ("a.blend\n1\n2\n  priority =  -3  \n", Ok(("/j/a.blend", 1, 2, -3))),
    ("a\n1\n2\n# urgent\n\npriority = 1\n  # done\n", Ok(("/j/a", 1, 2, 1))),
    ("a.blend\n1\n2\n#priority = x\n", Ok(("/j/a.blend", 1, 2, 0))),
    ("", Err("has 0 of the 3 required lines (.blend file, first frame, last frame)")),
    ("\n \r\n\n\n", Err("has 0 of the 3 required lines")),
    ("a.blend\n", Err("has 1 of the 3 required lines")),
    ("a.blend\n1\n\n\n", Err("has 2 of the 3 required lines")),
    ("\n1\n2\n", Err("line 1: .blend file path is empty")),
    ("a.blend\n\n2\n", Err("line 2: first frame is empty")),
    ("a.blend\nabc\n2\n", Err("line 2: first frame \"abc\" is not a number")),
    ("a.blend\n1\nten\n", Err("line 3: last frame \"ten\" is not a number")),
    ("a.blend\n1.5\n2\n", Err("line 2: first frame \"1.5\" is not a number")),
    ("a.blend\n+1\n2\n", Err("line 2: first frame \"+1\" is not a number")),
    ("a.blend\n-\n2\n", Err("line 2: first frame \"-\" is not a number")),
    ("a.blend\n-1\n2\n", Err("line 2: first frame \"-1\" is negative; frames start at 0")),
    ("a.blend\n1\n1048575\n", Err("line 3: last frame 1048575 is past 1048574, the last frame Blender can render")),
    ("a.blend\n1\n4294967296\n", Err("line 3: last frame 4294967296 is past 1048574")),
    ("a.blend\n10\n3\n", Err("last frame 3 is before first frame 10")),
    ("a.blend\n0\n1000000\n", Err("range 0..=1000000 has 1000001 frames, more than the 1000000 a job may have")),
    ("a.blend\n0\n1048574\n", Err("range 0..=1048574 has 1048575 frames")),
    ("a.blend\n1\n2\nfoo = 1\n", Err("unknown option \"foo\" on line 4 (the known options are: priority, notify")),
    ("a.blend\n1\n2\n\nPriority=1\n", Err("unknown option \"Priority\" on line 5")),
    ("a\n1\n2\npriority 5\n", Err("line 4: \"priority 5\" is not an option; options look like `key = value`")),
    ("a.blend\n1\n2\n = 5\n", Err("line 4: \"= 5\" is not an option")),
    ("a\n1\n2\npriority=1\n#\npriority=2", Err("option \"priority\" is set twice, on line 4 and line 6")),
    ("a\n1\n2\npriority = hi", Err("line 4: priority \"hi\" is not a whole number from -2147483648 to 2147483647")),
    ("a.blend\n1\n2\npriority =\n", Err("line 4: priority \"\" is not a whole number")),
    ("a\n1\n2\npriority = 2147483648", Err("line 4: priority \"2147483648\" is not a whole number")),
];

#[test]
fn parse_table() {
    for &(text, want) in CASES {
        match (parse_job_text("job", text, Path::new("/j")), want) {
            (Ok(job), Ok((blend, first, last, priority))) => {
                assert_eq!(job.name, "job");
                let want = (PathBuf::from(blend), first, last, priority);
                assert_eq!((job.blend, job.first, job.last, job.priority), want, "text: {text:?}");
            }
            (Err(err), Err(part)) => assert!(err.to_string().contains(part), "text: {text:?}, got: {err}"),
            (got, want) => panic!("text: {text:?}: got {got:?}, want {want:?}"),
        }
    }
}

/// Option lines after `a\n1\n2\n`, then either (notify, video, fps as num/den) or a part of the message.
type OptionCase = (&'static str, Result<(Option<&'static str>, Option<VideoFormat>, Option<(u32, u32)>), &'static str>);
#[rustfmt::skip]
const OPTION_CASES: &[OptionCase] = &[
    ("", Ok((None, None, None))),
    ("notify = mail -s done me@example.com", Ok((Some("mail -s done me@example.com"), None, None))),
    ("notify=./hook.sh \"$BLENDERDIST_JOB\" = x", Ok((Some("./hook.sh \"$BLENDERDIST_JOB\" = x"), None, None))),
    ("notify = echo a\tb  ", Ok((Some("echo a\tb"), None, None))),
    ("video = mp4", Ok((None, Some(Mp4), None))),
    ("video=mp4\r\nfps = 12", Ok((None, Some(Mp4), Some((12, 1))))),
    ("fps = 23.976", Ok((None, None, Some((2997, 125))))),
    ("fps = 30000/1001", Ok((None, None, Some((30000, 1001))))),
    ("fps = 50/2", Ok((None, None, Some((25, 1))))),
    ("fps = 0.5", Ok((None, None, Some((1, 2))))),
    ("fps = 1000", Ok((None, None, Some((1000, 1))))),
    ("priority = 3\nnotify = true\nvideo = mp4\nfps = 24", Ok((Some("true"), Some(Mp4), Some((24, 1))))),
    ("notify =", Err("line 4: notify needs a command")),
    ("\nnotify =   ", Err("line 5: notify needs a command")),
    ("notify = echo \u{7}", Err("line 4: the notify command has a control character in it")),
    ("notify = a\nnotify = b", Err("option \"notify\" is set twice, on line 4 and line 5")),
    ("verify = 1.5", Err("line 4: verify \"1.5\" is not a fraction from 0 to 1")),
    ("verify = -0", Err("line 4: verify \"-0\" is not a fraction")),
    ("verify = NaN", Err("line 4: verify \"NaN\" is not a fraction")),
    ("verify = 5%", Err("line 4: verify \"5%\" is not a fraction")),
    ("video = mov", Err("line 4: video \"mov\" is not a format blenderdist can make (the only one is: mp4)")),
    ("video = MP4", Err("line 4: video \"MP4\" is not a format")),
    ("video =", Err("line 4: video \"\" is not a format")),
    ("video = mp4\n# x\nvideo = mp4", Err("option \"video\" is set twice, on line 4 and line 6")),
    ("fps = 0", Err("line 4: fps \"0\" is not a frame rate like 24, 23.976 or 30000/1001 (above 0, at most 1000)")),
    ("fps = 1001", Err("line 4: fps \"1001\" is not a frame rate")),
    ("fps = -24", Err("line 4: fps \"-24\" is not a frame rate")),
    ("fps = 24fps", Err("line 4: fps \"24fps\" is not a frame rate")),
    ("fps = 1/0", Err("line 4: fps \"1/0\" is not a frame rate")),
    ("fps = 24.", Err("line 4: fps \"24.\" is not a frame rate")),
    ("fps = .5", Err("line 4: fps \".5\" is not a frame rate")),
    ("fps = 1e3", Err("line 4: fps \"1e3\" is not a frame rate")),
    ("fps = 23.9760001", Err("line 4: fps \"23.9760001\" is not a frame rate")),
    ("fps = 99999999999/1", Err("line 4: fps \"99999999999/1\" is not a frame rate")),
    ("fps =", Err("line 4: fps \"\" is not a frame rate")),
    ("fps = 24\nfps = 25", Err("option \"fps\" is set twice, on line 4 and line 5")),
    ("Video = mp4", Err("unknown option \"Video\" on line 4 (the known options are: priority, notify, video,")),
];

#[test]
fn option_table() {
    for &(options, want) in OPTION_CASES {
        let text = format!("a\n1\n2\n{options}\n");
        match (parse_job_text("job", &text, Path::new("/j")), want) {
            (Ok(job), Ok((notify, video, fps))) => {
                let got = (job.notify.as_deref(), job.video, job.fps.map(|r| (r.num, r.den)));
                assert_eq!(got, (notify, video, fps), "options: {options:?}");
            }
            (Err(err), Err(part)) => assert!(err.to_string().contains(part), "options: {options:?}, got: {err}"),
            (got, want) => panic!("options: {options:?}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn frame_rates_print_as_ffmpeg_takes_them() {
    let cases = [("24", "24"), ("23.976", "2997/125"), ("30000/1001", "30000/1001"), ("12.0", "12"), ("25/1", "25")];
    for (text, want) in cases {
        assert_eq!(FrameRate::parse(text).map(|r| r.to_string()).as_deref(), Some(want), "{text}");
    }
    assert_eq!(FrameRate::new(30_000_000, 1_001_000), Some(FrameRate { num: 30_000, den: 1001 }));
}

#[test]
fn job_names() {
    let cases = [
        ("/j/shot1.job", Some("shot1")),
        ("a b.job", Some("a b")),
        ("x.job.job", Some("x.job")),
        ("x.job.suspend", None),
        ("x.job~", None),
        (".job", None),
        ("..job", None),
        ("...job", None),
        (".blenderdist.job", None),
        ("x.JOB", None),
        ("x\n.job", None),
        ("/", None),
    ];
    for (path, want) in cases {
        assert_eq!(job_name(Path::new(path)).as_deref(), want, "path: {path:?}");
    }
}

#[cfg(unix)]
mod fs_tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// A JOBDIR holding `scene.blend`; keep the guard alive for the test's duration.
    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        fs::write(path.join("scene.blend"), b"BLENDER").unwrap();
        (dir, path)
    }

    fn load(dir: &Path, name: &str) -> Result<JobFile, JobFileError> {
        load_job_file(&dir.join(name), dir)
    }

    #[test]
    fn loads_good_job() {
        let (_tmp, dir) = setup();
        fs::write(dir.join("shot.job"), "scene.blend\r\n1\r\n10\r\npriority = 5\r\n").unwrap();
        let job = load(&dir, "shot.job").unwrap();
        assert_eq!((job.name, job.blend), ("shot".to_string(), dir.join("scene.blend")));
        assert_eq!((job.first, job.last, job.priority), (1, 10, 5));
    }

    #[test]
    fn reports_bad_job_files() {
        let (_tmp, dir) = setup();
        fs::create_dir(dir.join("folder.job")).unwrap();
        symlink(dir.join("nowhere"), dir.join("dangling.job")).unwrap();
        symlink(dir.join("loop.job"), dir.join("loop.job")).unwrap();
        fs::write(dir.join("latin1.job"), b"scene.blend\n1\n10\n# caf\xe9\n").unwrap();
        fs::write(dir.join("huge.job"), vec![b'#'; 70_000]).unwrap();
        fs::write(dir.join(".job"), "scene.blend\n1\n2\n").unwrap();
        fs::write(dir.join("missing.job"), "gone.blend\n1\n2\n").unwrap();
        fs::create_dir(dir.join("dir.blend")).unwrap();
        fs::write(dir.join("dirblend.job"), "dir.blend\n1\n2\n").unwrap();
        symlink(dir.join("self.blend"), dir.join("self.blend")).unwrap();
        fs::write(dir.join("loopblend.job"), "self.blend\n1\n2\n").unwrap();

        // A symlink loop is the portable way to get a read error even as root (chmod 000 does not stop root).
        let cases = [
            ("folder.job", "is a directory, not a file"),
            ("dangling.job", "is a dangling symbolic link (to /"),
            ("dangling.job", "/nowhere)"),
            ("loop.job", "cannot be read: "),
            ("latin1.job", "is not UTF-8 text (the first bad byte is on line 4)"),
            ("huge.job", "is 70000 bytes, more than the 65536 a job file may have"),
            (".job", "\".job\" is not a job file name"),
            ("missing.job", "/gone.blend does not exist"),
            ("dirblend.job", "/dir.blend is a directory, not a file"),
            ("loopblend.job", "/self.blend cannot be read: "),
        ];
        for (name, part) in cases {
            let err = load(&dir, name).unwrap_err().to_string();
            assert!(err.contains(part), "{name}: {err}");
        }
    }

    #[test]
    fn reports_pipe_instead_of_blocking() {
        let (_tmp, dir) = setup();
        let made = std::process::Command::new("mkfifo").arg(dir.join("pipe.job")).status();
        if !made.is_ok_and(|s| s.success()) {
            return; // No mkfifo here; nothing to test.
        }
        assert_eq!(load(&dir, "pipe.job"), Err(E::NotAFile));
    }

    #[test]
    fn reports_unreadable_file() {
        let (_tmp, dir) = setup();
        let path = dir.join("locked.job");
        fs::write(&path, "scene.blend\n1\n2\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
        if fs::read(&path).is_ok() {
            return; // Running as root: permissions do not apply (the symlink-loop case covers this path).
        }
        assert!(matches!(load(&dir, "locked.job"), Err(E::Unreadable(_))));
    }

    #[test]
    fn scan_lists_only_job_entries() {
        let (_tmp, dir) = setup();
        for name in ["b.job", "a.job", "a.job.suspend", "a.log", "a.job~", "ajob", ".job"] {
            fs::write(dir.join(name), "").unwrap();
        }
        fs::create_dir(dir.join("sub.job")).unwrap();
        fs::create_dir(dir.join("nested")).unwrap();
        fs::write(dir.join("nested/c.job"), "").unwrap();
        symlink(dir.join("nowhere"), dir.join("link.job")).unwrap();
        let want = [".job", "a.job", "b.job", "link.job", "sub.job"].map(|name| dir.join(name));
        assert_eq!(scan_job_dir(&dir).unwrap(), want);
        assert!(scan_job_dir(&dir.join("absent")).is_err());
    }
}

#[test]
fn verify_fractions() {
    let parse =
        |options: &str| parse_job_text("a", &format!("a.blend\n1\n2\n{options}"), Path::new("/j")).map(|j| j.verify());
    assert_eq!(parse(""), Ok(DEFAULT_VERIFY));
    assert_eq!(parse("verify = 0"), Ok(0.0));
    assert_eq!(parse("verify = 1"), Ok(1.0));
    assert_eq!(parse("verify = 0.25"), Ok(0.25));
}
