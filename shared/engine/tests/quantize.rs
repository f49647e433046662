//! The quantizer on the real MiniLM sample through ONNX Runtime, against the quality targets:
//! int8 mean cosine ≥ 0.995 and min ≥ 0.99 at ≤ 24 MB; int4 ≤ 0.2× the size with mean ≥ 0.98.
//! (The evaluation sentences are disjoint from the calibration sentences.)
//! And the int4 SmolLM2 decoder against llama.cpp's own 4-bit build of the same weights (Q4_1).

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

#[test]
fn int4_smollm2_keeps_the_perplexity_of_llama_cpps_own_q4_1() {
    let (report, out) = quantize(&sample("smollm2"), Scheme::Int4 { block_size: 32, symmetric: false }).unwrap();
    eprintln!("{}", serde_json::to_string(&report).unwrap());
    let generation = report.generation.as_ref().expect("a decoder is measured by generation");
    assert!(report.size_ratio <= 0.2, "{}", report.size_ratio);
    assert!(generation.quantized_perplexity / generation.source_perplexity <= 1.10, "{generation:?}");
    // On llama_reference.py's text, against llama.cpp on the GGUF as shipped (Q4_1).
    let reference: serde_json::Value = serde_json::from_slice(
        &std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/fixtures/smollm2_reference.json"))
            .unwrap(),
    )
    .unwrap();
    let tokens: Vec<u32> = serde_json::from_value(reference["q4_1"]["perplexity"]["tokens"].clone()).unwrap();
    let llama_cpp = reference["q4_1"]["perplexity"]["value"].as_f64().unwrap();
    let model =
        lmaas_engine::LoadedModel::load(&out.path().join("model.onnx"), &lmaas_engine::ExecutionProviders::cpu(), 0)
            .unwrap();
    let ours = model.perplexity(&tokens).unwrap();
    eprintln!("perplexity: lmaas int4 {ours:.3}, llama.cpp Q4_1 {llama_cpp:.3}");
    assert!(ours <= llama_cpp * 1.02, "{ours} vs {llama_cpp}");
}
