//! `lmaas push`: hash a model folder, declare the version, upload each file straight to S3 through
//! its presigned URL with a progress bar, commit, and tag.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_util::io::ReaderStream;

use crate::api::Api;

/// Pushes `paths` (one folder, whose plain files are taken, or the files themselves) as a version.
pub async fn push(
    api: &Api,
    paths: &[PathBuf],
    model: &str,
    version: u32,
    task: &str,
    tags: &[String],
) -> anyhow::Result<()> {
    let mut local = BTreeMap::new();
    for path in files_of(paths)? {
        let name = path.file_name().context("a file without a name")?.to_string_lossy().into_owned();
        if local.insert(name.clone(), path).is_some() {
            bail!("two files are named {name}");
        }
    }
    if !local.contains_key("model.onnx") {
        bail!("no model.onnx among the files to push");
    }
    let mut files = BTreeMap::new();
    for (name, path) in &local {
        let digest =
            lmaas_engine::cache::file_digest(path).await.with_context(|| format!("reading {}", path.display()))?;
        files.insert(name.clone(), json!({ "sha256": digest.sha256, "size": digest.size }));
    }
    let declared = api
        .send(
            api.request(Method::PUT, &format!("/v1/models/{model}/versions/{version}"))
                .json(&json!({ "files": files, "task": task })),
        )
        .await
        .context("declaring the version")?;
    for (name, upload) in declared["uploads"].as_object().context("the API returned no upload URLs")? {
        let url = upload["url"].as_str().context("an upload has no URL")?;
        let path = local.get(name).with_context(|| format!("the API asked for {name}, which was not declared"))?;
        upload_file(api, path, name, url).await?;
    }
    let manifest = api
        .send(api.request(Method::POST, &format!("/v1/models/{model}/versions/{version}/commit")))
        .await
        .context("committing the version")?;
    for tag in tags {
        api.send(
            api.request(Method::PUT, &format!("/v1/models/{model}/aliases/{tag}")).json(&json!({ "version": version })),
        )
        .await
        .with_context(|| format!("tagging version {version} as {tag}"))?;
    }
    let inputs = manifest["inputs"].as_array().map_or(0, Vec::len);
    println!("{model}:{version} is {} ({inputs} inputs){}", manifest["state"].as_str().unwrap_or("?"), tag_note(tags));
    Ok(())
}

fn files_of(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    if let [dir] = paths {
        if dir.is_dir() {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    files.push(entry.path());
                }
            }
            return Ok(files);
        }
    }
    for path in paths {
        if !path.is_file() {
            bail!("{} is not a file (give one folder, or files)", path.display());
        }
    }
    Ok(paths.to_vec())
}

fn tag_note(tags: &[String]) -> String {
    if tags.is_empty() {
        String::new()
    } else {
        format!(", tagged {}", tags.join(", "))
    }
}

async fn upload_file(api: &Api, path: &Path, name: &str, url: &str) -> anyhow::Result<()> {
    let file = tokio::fs::File::open(path).await?;
    let size = file.metadata().await?.len();
    let bar = ProgressBar::new(size).with_message(name.to_string());
    bar.set_style(
        ProgressStyle::with_template("{msg:>16} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")?
            .progress_chars("=> "),
    );
    let progress = bar.clone();
    let stream = ReaderStream::new(file).inspect(move |chunk| {
        if let Ok(bytes) = chunk {
            progress.inc(bytes.len() as u64);
        }
    });
    let body = reqwest::Body::wrap_stream(stream);
    let response = api
        .http
        .put(url)
        .header("content-length", size)
        .body(body)
        .send()
        .await
        .with_context(|| format!("uploading {name}"))?;
    bar.finish();
    if !response.status().is_success() {
        let text = response.text().await.unwrap_or_default();
        bail!("uploading {name} was refused: {}", text.chars().take(300).collect::<String>());
    }
    Ok(())
}

pub fn show(versions: &Value) {
    let aliases = versions["aliases"].as_object().cloned().unwrap_or_default();
    for version in versions["data"].as_array().into_iter().flatten() {
        let number = &version["version"];
        let tags: Vec<&str> = aliases.iter().filter(|(_, v)| *v == number).map(|(a, _)| a.as_str()).collect();
        println!(
            "{:>4}  {:<9} {:<11} {:>12} bytes  {}",
            number,
            version["state"].as_str().unwrap_or("?"),
            version["task"].as_str().unwrap_or("?"),
            version["files"].as_object().map_or(0, |f| f.values().filter_map(|e| e["size"].as_u64()).sum::<u64>()),
            tags.join(",")
        );
    }
}
