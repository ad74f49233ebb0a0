//! The few S3 XML documents the site reads and writes. Bytes from the server are untrusted:
//! every parser returns `None` / an error string instead of panicking.

use roxmltree::{Document, Node};

/// `<Error><Code>..</Code><Message>..</Message></Error>`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct S3ErrorBody {
    pub code: String,
    pub message: String,
}

fn child_text<'a>(node: Node<'a, '_>, name: &str) -> Option<&'a str> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
        .map(|c| c.text().unwrap_or(""))
}

fn parse(body: &[u8]) -> Option<Document<'_>> {
    let text = std::str::from_utf8(body).ok()?;
    Document::parse(text).ok()
}

/// Reads an S3 error document, if `body` is one.
pub fn error(body: &[u8]) -> Option<S3ErrorBody> {
    let doc = parse(body)?;
    let root = doc.root_element();
    if root.tag_name().name() != "Error" {
        return None;
    }
    Some(S3ErrorBody {
        code: child_text(root, "Code").unwrap_or("").to_string(),
        message: child_text(root, "Message").unwrap_or("").to_string(),
    })
}

/// One page of a ListObjectsV2 answer.
#[derive(Debug, Default)]
pub struct ListPage {
    /// (key, size); keys still URL-encoded when `encoding-type=url` was asked for.
    pub objects: Vec<(String, u64)>,
    pub truncated: bool,
    pub next_token: Option<String>,
    pub url_encoded: bool,
}

pub fn list_page(body: &[u8]) -> Result<ListPage, String> {
    let doc = parse(body).ok_or("the listing is not XML")?;
    let root = doc.root_element();
    if root.tag_name().name() != "ListBucketResult" {
        return Err(format!(
            "expected a ListBucketResult, got <{}>",
            root.tag_name().name()
        ));
    }
    let mut page = ListPage {
        truncated: child_text(root, "IsTruncated").is_some_and(|t| t.trim() == "true"),
        next_token: child_text(root, "NextContinuationToken")
            .map(str::to_string)
            .filter(|t| !t.is_empty()),
        url_encoded: child_text(root, "EncodingType").is_some_and(|t| t.trim() == "url"),
        ..ListPage::default()
    };
    for contents in root
        .children()
        .filter(|c| c.is_element() && c.tag_name().name() == "Contents")
    {
        let key = child_text(contents, "Key").ok_or("a listed object has no key")?;
        let size = child_text(contents, "Size")
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("listed object '{key}' has no valid size"))?;
        page.objects.push((key.to_string(), size));
    }
    Ok(page)
}

/// The upload id of an InitiateMultipartUploadResult.
pub fn upload_id(body: &[u8]) -> Option<String> {
    let doc = parse(body)?;
    let root = doc.root_element();
    if root.tag_name().name() != "InitiateMultipartUploadResult" {
        return None;
    }
    child_text(root, "UploadId")
        .map(str::to_string)
        .filter(|s| !s.is_empty())
}

/// The body of CompleteMultipartUpload.
pub fn complete_multipart(etags: &[String]) -> String {
    let mut out = String::from("<CompleteMultipartUpload>");
    for (i, etag) in etags.iter().enumerate() {
        out.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
            i + 1,
            escape(etag)
        ));
    }
    out.push_str("</CompleteMultipartUpload>");
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A bucket's Object Lock configuration.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LockConfig {
    pub enabled: bool,
    /// (mode, "N days" / "N years").
    pub default_retention: Option<(String, String)>,
}

pub fn lock_config(body: &[u8]) -> Option<LockConfig> {
    let doc = parse(body)?;
    let root = doc.root_element();
    if root.tag_name().name() != "ObjectLockConfiguration" {
        return None;
    }
    let enabled = child_text(root, "ObjectLockEnabled").is_some_and(|t| t.trim() == "Enabled");
    let default_retention = root
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "DefaultRetention")
        .map(|d| {
            let mode = child_text(d, "Mode").unwrap_or("").to_string();
            let period = match (child_text(d, "Days"), child_text(d, "Years")) {
                (Some(days), _) => format!("{} days", days.trim()),
                (_, Some(years)) => format!("{} years", years.trim()),
                _ => String::new(),
            };
            (mode, period)
        });
    Some(LockConfig {
        enabled,
        default_retention,
    })
}

/// The number of `<Version>` entries (not delete markers) for exactly `key` in a
/// ListObjectVersions answer.
pub fn version_count(body: &[u8], key: &str) -> Option<usize> {
    let doc = parse(body)?;
    let root = doc.root_element();
    if root.tag_name().name() != "ListVersionsResult" {
        return None;
    }
    Some(
        root.children()
            .filter(|c| c.is_element() && c.tag_name().name() == "Version")
            .filter(|v| child_text(*v, "Key") == Some(key))
            .count(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_documents() {
        let e = error(
            b"<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>gone</Message></Error>",
        )
        .unwrap();
        assert_eq!(e.code, "NoSuchKey");
        assert_eq!(e.message, "gone");
        assert!(error(b"<ListBucketResult/>").is_none());
        assert!(error(b"\xff\xfe").is_none());
        assert!(error(b"").is_none());

        let page = list_page(
            br#"<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><IsTruncated>true</IsTruncated>
            <Contents><Key>a%2Fb</Key><Size>3</Size></Contents><Contents><Key>c</Key><Size>0</Size></Contents>
            <NextContinuationToken>tok</NextContinuationToken><EncodingType>url</EncodingType></ListBucketResult>"#,
        )
        .unwrap();
        assert!(page.truncated && page.url_encoded);
        assert_eq!(page.next_token.as_deref(), Some("tok"));
        assert_eq!(page.objects, vec![("a%2Fb".into(), 3), ("c".into(), 0)]);
        assert!(list_page(b"<ListBucketResult><Contents><Key>x</Key><Size>-1</Size></Contents></ListBucketResult>").is_err());
        assert!(list_page(b"<Error/>").is_err());

        assert_eq!(
            upload_id(b"<InitiateMultipartUploadResult><Bucket>b</Bucket><UploadId>u1</UploadId></InitiateMultipartUploadResult>").as_deref(),
            Some("u1")
        );
        assert_eq!(upload_id(b"<InitiateMultipartUploadResult/>"), None);

        let lock = lock_config(b"<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>GOVERNANCE</Mode><Days>3</Days></DefaultRetention></Rule></ObjectLockConfiguration>").unwrap();
        assert!(lock.enabled);
        assert_eq!(
            lock.default_retention,
            Some(("GOVERNANCE".into(), "3 days".into()))
        );
        assert_eq!(
            complete_multipart(&["\"e1\"".into()]),
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&quot;e1&quot;</ETag></Part></CompleteMultipartUpload>"
        );
    }
}
