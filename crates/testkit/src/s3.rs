//! S3 sites on the tests' S3 server ([`crate::moto::s3_target`]): test settings (small parts, so
//! multi-MiB objects go multipart) and a fresh bucket per site.

use std::time::Duration;

use embassy_sites::s3::{S3Config, S3Credentials};
use embassy_sites::S3Site;

/// The moto harness, so that `s3::` names all an S3 test needs.
pub use crate::moto::{moto, s3_target, unique_bucket, MotoServer, S3Target, ServerKind};

/// Test settings on the tests' S3 server ([`s3_target`]).
pub fn target_config(bucket: &str, prefix: &str) -> S3Config {
    let t = s3_target();
    let mut cfg = s3_config(&t.endpoint, bucket, prefix);
    cfg.region = t.region.clone();
    cfg.credentials = S3Credentials {
        access_key_id: t.access_key_id.clone(),
        secret_access_key: t.secret_access_key.clone(),
        session_token: None,
    };
    cfg
}

/// Test settings for moto: small parts so that multi-MiB objects go multipart.
pub fn s3_config(endpoint: &str, bucket: &str, prefix: &str) -> S3Config {
    let mut cfg = S3Config::new(
        bucket,
        prefix,
        endpoint,
        S3Credentials {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            session_token: None,
        },
    );
    cfg.part_size = 5 * 1024 * 1024;
    cfg.multipart_threshold = 8 * 1024 * 1024;
    cfg.parallelism = 4;
    cfg.io_timeout = Duration::from_secs(30);
    cfg
}

/// A fresh bucket on the tests' S3 server ([`s3_target`]) and a site on it.
pub fn s3_site(tag: &str, prefix: &str, object_lock: bool) -> S3Site {
    let bucket = unique_bucket(tag);
    let site = S3Site::new(target_config(&bucket, prefix)).unwrap();
    assert!(site.create_bucket(object_lock).expect("create bucket"));
    site
}

/// A fresh bucket on the shared moto server and a site on it (tests that need moto itself: the
/// fault proxy, signature checks).
pub fn moto_site(tag: &str, prefix: &str, object_lock: bool) -> S3Site {
    let server = moto();
    let bucket = unique_bucket(tag);
    let site = S3Site::new(s3_config(&server.endpoint, &bucket, prefix)).unwrap();
    assert!(site.create_bucket(object_lock).expect("create bucket"));
    site
}
