//! Scheduler tests of what volunteers' Blenders can do: the version that saved a .blend, denoising.

use super::*;

fn caps(version: &str, denoiser: bool) -> PeerCaps {
    PeerCaps {
        blender: BlendVersion::from_blender_version_string(version).unwrap(),
        blender_text: version.to_owned(),
        denoiser,
        opengl: None,
    }
}

fn needs(saved_by: Option<&str>, denoiser: bool) -> JobNeeds {
    JobNeeds { saved_by: saved_by.and_then(BlendVersion::from_blender_version_string), denoiser, opengl: false }
}

#[test]
fn needs_against_caps() {
    // (what the job needs, what the volunteer has, why it cannot render it)
    let table: &[(JobNeeds, PeerCaps, Option<&str>)] = &[
        (needs(Some("3.4"), false), caps("3.4.1", false), None),
        (needs(Some("3.3"), false), caps("3.4.1", false), None),
        (needs(Some("4.3"), false), caps("3.4.1", false), Some("saved by Blender 4.3")),
        (needs(Some("3.6"), false), caps("3.4.1", false), Some("saved by Blender 3.6")),
        (needs(Some("2.79"), false), caps("3.4.1", false), None),
        (needs(None, false), caps("3.4.1", false), None),
        (needs(Some("3.4"), true), caps("3.4.1", false), Some("OpenImageDenoise")),
        (needs(Some("3.4"), true), caps("4.2.0", true), None),
        (
            JobNeeds { opengl: true, ..needs(None, false) },
            PeerCaps { opengl: Some(false), ..caps("3.4.1", false) },
            Some("OpenGL"),
        ),
        (
            JobNeeds { opengl: true, ..needs(None, false) },
            PeerCaps { opengl: Some(true), ..caps("3.4.1", false) },
            None,
        ),
        (JobNeeds { opengl: true, ..needs(None, false) }, caps("3.4.1", false), None),
    ];
    for (need, cap, why) in table {
        let got = need.unmet_by(cap);
        match why {
            None => assert_eq!(got, None, "{need:?} vs {cap:?}"),
            Some(text) => assert!(got.as_deref().is_some_and(|g| g.contains(text)), "{need:?} vs {cap:?}: {got:?}"),
        }
    }
}

#[test]
fn frames_go_only_to_volunteers_that_can_open_the_file() {
    let mut s = S::new(SchedulerConfig::default());
    let now = Instant::now();
    let new_file = JobDesc { needs: needs(Some("4.3"), false), ..desc("new", 1, 2, 5, 0) };
    s.upsert_job(new_file, &[]);
    s.upsert_job(desc("old", 1, 2, 0, 1), &[]);
    s.set_caps(&"a", caps("3.4.1", false));
    // The high-priority job needs a newer Blender: "a" gets the other job's frames.
    let got: Vec<_> = s.claim(&"a", 4, now).into_iter().map(|g| (g.job, g.frame)).collect();
    assert_eq!(got, vec![("old".to_string(), 1), ("old".to_string(), 2)]);
    assert!(!s.has_work_for(&"a"));
    assert_eq!(
        s.unservable(),
        vec![("new".to_string(), "saved by Blender 4.3; volunteers have Blender 3.4.1".to_string())]
    );
    // A volunteer that said nothing is trusted; one with a newer Blender can render it.
    s.set_caps(&"b", caps("4.3.2", false));
    assert_eq!(s.unservable(), vec![]);
    let got: Vec<_> = s.claim(&"b", 1, now).into_iter().map(|g| (g.job, g.frame)).collect();
    assert_eq!(got, vec![("new".to_string(), 1)]);
    // Once it leaves, the job waits again.
    s.peer_gone(&"b");
    assert_eq!(s.unservable().len(), 1);
}
