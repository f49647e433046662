//! The quantizer on the real MiniLM sample through ONNX Runtime, against the quality targets:
//! int8 mean cosine ≥ 0.995 and min ≥ 0.99 at ≤ 24 MB; int4 ≤ 0.2× the size with mean ≥ 0.98.
//! (The evaluation sentences are disjoint from the calibration sentences.)

use std::path::{Path, PathBuf};

use lmaas_engine::optimize::{default_calibration, quantize_model, QualityReport, QuantizeRequest};
use lmaas_onnx::quantize::Scheme;

fn sample(model: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.lmaas/samples").join(model).join("model.onnx")
}

fn quantize(source: &Path, scheme: Scheme) -> Result<(QualityReport, tempfile::TempDir), String> {
    let out = tempfile::tempdir().unwrap();
    let task = serde_json::from_slice(&std::fs::read(source.with_file_name("lmaas.json")).unwrap_or(b"null".to_vec()))
        .unwrap();
    let report = quantize_model(
        source,
        out.path(),
        &QuantizeRequest::new(scheme),
        &task,
        Some(&default_calibration()),
        &mut |_, _, _| true,
    )
    .map_err(|e| e.to_string())?;
    Ok((report, out))
}

#[test]
fn int8_minilm_meets_the_quality_and_size_targets() {
    let (report, out) = quantize(&sample("minilm"), Scheme::Int8).unwrap();
    let cosine = report.cosine.as_ref().expect("an embeddings model is measured by cosine");
    eprintln!("{}", serde_json::to_string(&report).unwrap());
    assert!(cosine.count >= 50, "{cosine:?}");
    assert!(cosine.mean >= 0.995 && cosine.min >= 0.99, "{cosine:?}");
    assert!(report.quantized_bytes <= 24_000_000, "{} bytes", report.quantized_bytes);
    assert_eq!(report.quantized_nodes, 37, "36 MatMuls and the word embeddings");
    let written = std::fs::metadata(out.path().join("model.onnx")).unwrap().len();
    assert_eq!(written, report.quantized_bytes);
    assert!(out.path().join("tokenizer.json").exists(), "the tokenizer travels with the model");
}

#[test]
fn int4_minilm_meets_the_quality_and_size_targets() {
    let scheme = Scheme::parse("int4", Some(32), None).unwrap();
    let (report, _out) = quantize(&sample("minilm"), scheme).unwrap();
    let cosine = report.cosine.as_ref().unwrap();
    eprintln!("{}", serde_json::to_string(&report).unwrap());
    assert!(cosine.mean >= 0.98, "{cosine:?}");
    assert!(report.size_ratio <= 0.2, "{}", report.size_ratio);
}

#[test]
fn a_model_with_nothing_to_quantize_says_so() {
    let error = quantize(&sample("mlp"), Scheme::Int8).unwrap_err();
    assert!(error.contains("nothing to quantize"), "{error}");
}
