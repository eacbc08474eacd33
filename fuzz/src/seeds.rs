//! Seed inputs: real encodings of what each target decodes, made with the crate's own types and encoders, so the
//! fuzzer starts from valid messages and mutates them. Small on purpose (a few KB per target).

use std::io::Write as _;

use blenderdist::protocol::{
    to_cbor, write_header, write_header_max, BlobHash, BlobReply, BlobRequest, ExtraOutput, FileKind, FrameGrant,
    FrameRef, JobManifest, JobOffer, JobReport, JobState, OfferedJob, PeerReport, PlatformBinary, ProjectFile,
    SignedManifest, StatusReport, UpdateManifest, UpdateRequest, VolunteerCaps, WorkRequest, WorkResponse,
    MAX_MANIFEST,
};
use libp2p::identity::Keypair;

/// The key the `gossip` target trusts and signs with: fixed, so seeds signed with it stay valid.
pub fn owner_key() -> Keypair {
    Keypair::ed25519_from_bytes([7u8; 32]).expect("a 32-byte ed25519 secret")
}

/// The `gossip` target's first byte: what the rest of the input is.
pub mod gossip_mode {
    /// A job offer, as `decode_offer` reads it from the offer topic.
    pub const OFFER: u8 = 0;
    /// A signed manifest, as read from the update topic, then verified against the owner key.
    pub const SIGNED: u8 = 1;
    /// The bytes of an update manifest, signed here with the owner key, so verification passes and decoding runs.
    pub const MANIFEST: u8 = 2;
}

/// Line prefix of the driver's replies on Blender's stdout (`MARK` in src/worker/session.rs).
pub const DRIVER_MARK: &str = "@@BLENDERDIST@@ ";

/// Every seed: (target, file name, bytes).
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, items: Vec<(&str, Vec<u8>)>| {
        out.extend(items.into_iter().map(|(name, bytes)| (target, name.to_string(), bytes)));
    };
    add("work_request", work_requests());
    add("work_response", work_responses());
    add("gossip", gossip());
    add("job_manifest", vec![("manifest", cbor(&manifest()))]);
    add("blob_header", blob_headers());
    add("driver_reply", driver_replies());
    add("job_file", job_files());
    add("blend_sdna", vec![("dna8", [&[8u8][..], &dna()].concat()), ("dna4", [&[4u8][..], &dna()].concat())]);
    add("blend_file", blend_files());
    add_huge_claims(&mut out);
    out
}

/// Inputs whose lengths claim far more than they hold (4 GiB strings, 2^32-element arrays, 2 GiB blocks): a decoder
/// that allocated what a length claims before reading would fail here at once, under the run's memory limit.
fn add_huge_claims(out: &mut Vec<(&'static str, String, Vec<u8>)>) {
    let text = |t: &str| [&[0x60 + t.len() as u8][..], t.as_bytes()].concat();
    let array_2_32 = [0x9b, 0, 0, 0, 1, 0, 0, 0, 0];
    let string_4g = [0x7a, 0xff, 0xff, 0xff, 0xff, b'x'];
    let bytes_4g = [0x5a, 0xff, 0xff, 0xff, 0xff, 1];
    let claims: Vec<(&'static str, &str, Vec<u8>)> = vec![
        (
            "work_request",
            "huge-outputs",
            [&[0xa1][..], &text("Rendered"), &[0xa1], &text("outputs"), &array_2_32].concat(),
        ),
        ("work_request", "huge-error", [&[0xa1][..], &text("Failed"), &[0xa1], &text("error"), &string_4g].concat()),
        ("work_response", "huge-grants", [&[0xa1][..], &text("Granted"), &array_2_32].concat()),
        (
            "work_response",
            "huge-reason",
            [&[0xa1][..], &text("Refused"), &[0xa1], &text("reason"), &string_4g].concat(),
        ),
        ("gossip", "huge-jobs", [&[gossip_mode::OFFER, 0xa1][..], &text("jobs"), &array_2_32].concat()),
        ("gossip", "huge-signature", [&[gossip_mode::SIGNED, 0xa1][..], &text("signature"), &bytes_4g].concat()),
        ("gossip", "huge-binaries", [&[gossip_mode::MANIFEST, 0xa1][..], &text("binaries"), &array_2_32].concat()),
        ("job_manifest", "huge-files", [&[0xa1][..], &text("files"), &array_2_32].concat()),
        ("blob_header", "huge-length", vec![0, 0xff, 0xff, 0xff, 0xff, 0xa0]),
        ("blob_header", "huge-manifest", [&[3, 0, 0, 0x40, 0, 0x81][..], &text("manifest"), &bytes_4g].concat()),
        ("blend_sdna", "huge-names", [&[8u8][..], b"SDNANAME", &[0xff, 0xff, 0xff, 0x7f], b"a\0"].concat()),
        (
            "blend_file",
            "huge-block",
            [&b"BLENDER-v304DNA1"[..], &[0xff, 0xff, 0xff, 0x7f], &[0; 12], &[1, 0, 0, 0]].concat(),
        ),
    ];
    out.extend(claims.into_iter().map(|(target, name, bytes)| (target, name.to_string(), bytes)));
}

fn cbor<T: serde::Serialize>(value: &T) -> Vec<u8> {
    to_cbor(value).expect("seeds encode")
}

fn hash(text: &str) -> BlobHash {
    BlobHash::of_bytes(text.as_bytes())
}

fn caps() -> VolunteerCaps {
    VolunteerCaps {
        blender: "4.2.3".into(),
        build_hash: "a86e5e9d4b8c".into(),
        device: "CPU".into(),
        denoiser: true,
        opengl: Some(false),
        name: Some("bob-pc".into()),
    }
}

fn work_requests() -> Vec<(&'static str, Vec<u8>)> {
    let output = ExtraOutput { name: "passes/Image0012.exr".into(), blob: hash("o"), size: 99 };
    vec![
        ("claim", cbor(&WorkRequest::Claim { version: 2, slots: 2, caps: Some(caps()) })),
        ("claim_bare", cbor(&WorkRequest::Claim { version: 2, slots: 1, caps: None })),
        (
            "rendered",
            cbor(&WorkRequest::Rendered {
                job: "shot".into(),
                frame: 12,
                blend: hash("b"),
                blob: hash("f"),
                size: 123_456,
                ext: "png".into(),
                outputs: vec![output],
            }),
        ),
        (
            "failed",
            cbor(&WorkRequest::Failed {
                job: "shot".into(),
                frame: 3,
                blend: hash("b"),
                error: "out of memory".into(),
            }),
        ),
        ("renew", cbor(&WorkRequest::Renew { job: "shot".into(), frame: 4, blend: hash("b") })),
        ("status", cbor(&WorkRequest::Status)),
    ]
}

fn report() -> StatusReport {
    StatusReport {
        jobs: vec![JobReport {
            name: "shot".into(),
            state: JobState::Rendering,
            priority: 1,
            frames_total: 250,
            frames_done: 40,
            frames_rendering: 2,
            frames_failed: 1,
            avg_frame_seconds: Some(41.5),
            eta_seconds: Some(3600.0),
            blend: "shot.blend".into(),
            error: Some("frame 7 failed".into()),
        }],
        peers: vec![PeerReport {
            id: "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".into(),
            name: "bob-pc".into(),
            blender: Some("4.2.3".into()),
            frames_done: 17,
            rendering: vec![FrameRef { job: "shot".into(), frame: 41 }],
            avg_frame_seconds: None,
        }],
        ..StatusReport::default()
    }
}

fn work_responses() -> Vec<(&'static str, Vec<u8>)> {
    let grant = FrameGrant { job: "shot".into(), frame: 12, blend: hash("m"), blend_size: 812 };
    vec![
        ("granted", cbor(&WorkResponse::Granted(vec![grant.clone(), FrameGrant { frame: 13, ..grant }]))),
        ("nowork", cbor(&WorkResponse::NoWork)),
        ("upload", cbor(&WorkResponse::Upload)),
        ("refused", cbor(&WorkResponse::Refused { reason: "protocol version 1, this host speaks 2".into() })),
        ("status", cbor(&WorkResponse::Status(report()))),
    ]
}

fn update_manifest() -> UpdateManifest {
    UpdateManifest {
        protocol_version: 2,
        version: "0.1.0".into(),
        build: hash("build"),
        issued_at: 1_700_000_000_000,
        binaries: vec![PlatformBinary {
            target: "x86_64-unknown-linux-gnu".into(),
            hash: hash("bin"),
            size: 9_000_000,
        }],
    }
}

fn signed_manifest() -> SignedManifest {
    blenderdist::update::manifest::sign(&owner_key(), &update_manifest()).expect("seeds sign")
}

fn gossip() -> Vec<(&'static str, Vec<u8>)> {
    use gossip_mode::*;
    let offer = JobOffer {
        version: 2,
        seq: 7,
        jobs: vec![OfferedJob { job: "shot".into(), pending: 210 }, OfferedJob { job: "intro".into(), pending: 3 }],
    };
    let offer = blenderdist::protocol::encode_offer(&offer).expect("seeds encode");
    vec![
        ("offer", [&[OFFER][..], &offer].concat()),
        ("signed", [&[SIGNED][..], &cbor(&signed_manifest())].concat()),
        ("manifest", [&[MANIFEST][..], &cbor(&update_manifest())].concat()),
    ]
}

fn manifest() -> JobManifest {
    let file = |path: &str, kind| ProjectFile { path: path.into(), hash: hash(path), size: 1000, kind };
    JobManifest {
        blend: file("/home/ann/shot/shot.blend", FileKind::Blend),
        files: vec![
            file("/home/ann/shot/tex/wood.png", FileKind::Image),
            file("/home/ann/lib/chars.blend", FileKind::Library),
            file("/home/ann/shot/cache/fluid_0001.vdb", FileKind::Volume),
        ],
        missing: vec!["/home/ann/shot/tex/gone.png".into()],
    }
}

fn blob_headers() -> Vec<(&'static str, Vec<u8>)> {
    /// The first byte selects the header type, as in fuzz_targets/blob_header.rs.
    fn framed<T: serde::Serialize>(kind: u8, value: &T, max: u32) -> Vec<u8> {
        let mut out = vec![kind];
        futures::executor::block_on(write_header_max(&mut out, value, max)).expect("seeds frame");
        out
    }
    let mut get = vec![0u8];
    futures::executor::block_on(write_header(&mut get, &BlobRequest::Get { hash: hash("x") })).expect("seeds frame");
    vec![
        ("get", get),
        ("put", framed(0, &BlobRequest::Put { hash: hash("x"), size: 1 << 20 }, 4096)),
        ("found", framed(1, &BlobReply::Found { size: 42 }, 4096)),
        ("refused", framed(1, &BlobReply::Refused { reason: "no grant".into() }, 4096)),
        ("update_build", framed(2, &UpdateRequest::Build { hash: hash("bin") }, 4096)),
        ("update_manifest", framed(2, &UpdateRequest::Manifest, 4096)),
        ("signed", framed(3, &Some(signed_manifest()), MAX_MANIFEST as u32)),
        ("signed_none", framed(3, &None::<SignedManifest>, MAX_MANIFEST as u32)),
    ]
}

fn driver_replies() -> Vec<(&'static str, Vec<u8>)> {
    let m = DRIVER_MARK;
    let session = format!(
        "Blender 4.2.3 (hash a86e5e9d4b8c built 2024-10-15)\nRead blend: \"/cache/root/shot.blend\"\n\
         {m}{{\"ready\": true, \"blender\": \"4.2.3\", \"format\": \"PNG\", \"ext\": \"png\", \"missing_files\": []}}\n\
         Fra:12 Mem:30.1M (Peak 31.0M) | Time:00:00.21 | Rendering 1 / 16 samples\n\
         {m}{{\"frame\": 12, \"ok\": true, \"path\": \"/cache/work/1/0012.png\", \"ext\": \"png\", \"seconds\": 1.23}}\n\
         {m}{{\"frame\": 13, \"ok\": false, \"error\": \"Error: Not freed memory blocks\"}}\n"
    );
    let failed = format!("{m}{{\"ready\": false, \"error\": \"driver arguments: --threads must be >= 0\"}}\r\n");
    let missing = format!("{m}{{\"ready\": true, \"missing_files\": [\"/home/ann/tex/a.png\", \"//tex/b.png\"]}}");
    // The first byte is how many bytes the pipe gives per read (see fuzz_targets/driver_reply.rs).
    vec![
        ("session", [&[7u8][..], session.as_bytes()].concat()),
        ("failed", [&[0u8][..], failed.as_bytes()].concat()),
        ("missing", [&[15u8][..], missing.as_bytes()].concat()),
    ]
}

fn job_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("plain", b"shot.blend\n1\n250\n".to_vec()),
        (
            "options",
            b"/home/ann/shot.blend\n1\n48\npriority = -3\n# a comment\n\nnotify = notify-send done\nvideo = mp4\n\
              fps = 30000/1001\n"
                .to_vec(),
        ),
        ("crlf_bom", "\u{feff}shot.blend\r\n10\r\n20\r\nfps = 23.976\r\n\r\n".as_bytes().to_vec()),
    ]
}

/// A DNA1 block's data: a few base types, an `Image` and a `Library` with path fields, a `Scene` with pointers and
/// a 2-D array.
pub fn dna() -> Vec<u8> {
    let types: &[(&str, u16)] =
        &[("char", 1), ("short", 2), ("int", 4), ("float", 4), ("Image", 1040), ("Library", 2072), ("Scene", 28)];
    let names = ["name[16]", "filepath[1024]", "*next", "flag", "filepath_abs[1024]", "(*func)()", "size[2][3]"];
    // (struct type, [(field type, field name)]); sizes add up to the TLEN above (pointers are 8 bytes here).
    let structs: &[(u16, &[(u16, u16)])] =
        &[(4, &[(0, 0), (0, 1)]), (5, &[(0, 0), (0, 1), (0, 4), (2, 3), (2, 3)]), (6, &[(0, 2), (0, 5), (1, 6)])];
    let mut out = b"SDNANAME".to_vec();
    out.extend((names.len() as i32).to_le_bytes());
    for name in names {
        out.extend(name.as_bytes());
        out.push(0);
    }
    pad4(&mut out);
    out.extend(b"TYPE");
    out.extend((types.len() as i32).to_le_bytes());
    for (name, _) in types {
        out.extend(name.as_bytes());
        out.push(0);
    }
    pad4(&mut out);
    out.extend(b"TLEN");
    for (_, len) in types {
        out.extend(len.to_le_bytes());
    }
    pad4(&mut out);
    out.extend(b"STRC");
    out.extend((structs.len() as i32).to_le_bytes());
    for (t, fields) in structs {
        out.extend(t.to_le_bytes());
        out.extend((fields.len() as u16).to_le_bytes());
        for (ft, name) in *fields {
            out.extend(ft.to_le_bytes());
            out.extend(name.to_le_bytes());
        }
    }
    out
}

fn pad4(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(4), 0);
}

/// A block of an 8-byte-pointer file: code, length, old pointer, SDNA index, count, data.
fn block(code: &[u8; 4], sdna: u32, count: u32, data: &[u8]) -> Vec<u8> {
    let mut out = code.to_vec();
    out.extend((data.len() as i32).to_le_bytes());
    out.extend(0x7fff_1234_5678u64.to_le_bytes());
    out.extend(sdna.to_le_bytes());
    out.extend(count.to_le_bytes());
    out.extend(data);
    out
}

/// A small plain .blend: an image with an absolute path, one with a relative path, the DNA, ENDB.
fn plain_blend() -> Vec<u8> {
    let image = |path: &str| {
        let mut data = vec![0u8; 1040];
        data[..6].copy_from_slice(b"IMwood");
        data[16..16 + path.len()].copy_from_slice(path.as_bytes());
        data
    };
    let mut out = b"BLENDER-v304".to_vec();
    out.extend(block(b"IM\0\0", 0, 1, &image("/home/ann/tex/wood.png")));
    out.extend(block(b"IM\0\0", 0, 1, &image("//tex/rel.png")));
    out.extend(block(b"TEST", 1, 0, &[1, 2, 3, 4]));
    out.extend(block(b"DNA1", 0, 1, &dna()));
    out.extend(block(b"ENDB", 0, 0, &[]));
    out
}

fn blend_files() -> Vec<(&'static str, Vec<u8>)> {
    let plain = plain_blend();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gzip.write_all(&plain).expect("in memory");
    let gzip = gzip.finish().expect("in memory");
    let zstd = ruzstd::encoding::compress_to_vec(&plain[..], ruzstd::encoding::CompressionLevel::Fastest);
    vec![
        ("plain", plain),
        ("gzip", gzip),
        ("zstd", zstd),
        ("header5", b"BLENDER17-01v0500".to_vec()),
        ("header304_zst", include_bytes!("../../src/blendfile/testdata/header304.blend.zst").to_vec()),
    ]
}
