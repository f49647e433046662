//! Quantized MiniLM side by side in one run: fp32, ONNX Runtime's own int8 (`quantize_dynamic`,
//! per-channel: made by infra/local/bench.sh), lmaas int8 and lmaas int4. Same tokenized
//! inputs, same session options and threads, runs interleaved round-robin so machine noise hits
//! every model alike. Quality is cosine to fp32 over the 64 evaluation sentences (which the
//! calibration never saw); latency is one session.run on tokens at batch 1 and 32.
//!
//! Run: `make bench` (or `infra/local/bench.sh quantize`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use lmaas_engine::optimize::{cosine, default_calibration, quantize_model, QuantizeRequest};
use lmaas_engine::{EmbeddingConfig, EmbeddingInput, ExecutionProviders, LoadedModel};
use lmaas_onnx::quantize::Scheme;

/// Timed rounds at batch 1 and at batch 32 (after 3 warm-up rounds).
const ROUNDS: [usize; 2] = [200, 20];

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let source = root.join(".lmaas/samples/minilm/model.onnx");
    let ort_int8 = root.join(".lmaas/bench/ort_int8/model.onnx");
    assert!(ort_int8.exists(), "{} is missing: run infra/local/bench.sh quantize", ort_int8.display());
    let work = tempfile::tempdir().unwrap();
    let calibration = default_calibration();
    let mut models: Vec<(String, PathBuf)> =
        vec![("fp32".into(), source.clone()), ("onnxruntime int8".into(), ort_int8)];
    let int4 = Scheme::parse("int4", Some(32), None).unwrap();
    let plain = QuantizeRequest { outlier_channels: 0, ..QuantizeRequest::new(Scheme::Int8) };
    let variants = [
        ("lmaas int8", QuantizeRequest::new(Scheme::Int8)),
        ("lmaas int8 no-split", plain),
        ("lmaas int4 b32", QuantizeRequest::new(int4)),
    ];
    for (label, request) in variants {
        let out = work.path().join(label.replace(' ', "_"));
        std::fs::create_dir_all(&out).unwrap();
        let started = Instant::now();
        quantize_model(&source, &out, &request, &serde_json::Value::Null, Some(&calibration), &mut |_, _, _| true)
            .unwrap();
        eprintln!("{label}: quantized in {:.1} s", started.elapsed().as_secs_f64());
        models.push((label.into(), out.join("model.onnx")));
    }
    let loaded: Vec<LoadedModel> = models.iter().map(|(_, path)| load(path, &source)).collect();

    // Quality against fp32 on the evaluation sentences, batches of 16.
    let config = EmbeddingConfig::default();
    let embed = |model: &LoadedModel| -> Vec<Vec<f32>> {
        calibration
            .evaluation
            .chunks(16)
            .flat_map(|c| model.embed(&EmbeddingInput::Texts(c.to_vec()), &config, None).unwrap().vectors)
            .collect()
    };
    let reference = embed(&loaded[0]);
    let quality: Vec<(f64, f64)> = loaded
        .iter()
        .map(|m| {
            let cosines: Vec<f64> = embed(m).iter().zip(&reference).map(|(a, b)| cosine(a, b)).collect();
            (cosines.iter().sum::<f64>() / cosines.len() as f64, cosines.iter().cloned().fold(1.0, f64::min))
        })
        .collect();

    // Latency: the same token tensors for every model, round-robin.
    let mut latency = vec![vec![0f64; 2]; models.len()];
    for (column, batch) in [1usize, 32].into_iter().enumerate() {
        let texts: Vec<String> =
            (0..batch).map(|i| calibration.evaluation[i % calibration.evaluation.len()].clone()).collect();
        let tokens = loaded[0].token_tensors(&EmbeddingInput::Texts(texts), 256).unwrap().tensors;
        let mut times = vec![Vec::new(); models.len()];
        for round in 0..ROUNDS[column] + 3 {
            for (i, model) in loaded.iter().enumerate() {
                let started = Instant::now();
                std::hint::black_box(model.run(&tokens, &["last_hidden_state".into()]).unwrap());
                if round >= 3 {
                    times[i].push(started.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        for (i, t) in times.iter_mut().enumerate() {
            t.sort_by(f64::total_cmp);
            latency[i][column] = t[t.len() / 2];
        }
    }

    let ort = 1; // the row the ratios are against
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "MiniLM-L6 quantized, side by side (p50 of session.run on tokens, {threads} threads; x = / onnxruntime int8)"
    );
    println!(
        "{:<20} {:>9} {:>10} {:>10} {:>11} {:>7} {:>12} {:>7}",
        "model", "size MB", "cos mean", "cos min", "b1 p50 ms", "b1 x", "b32 p50 ms", "b32 x"
    );
    for (i, (label, path)) in models.iter().enumerate() {
        let size = std::fs::metadata(path).unwrap().len() as f64 / 1e6;
        println!(
            "{label:<20} {size:>9.2} {:>10.5} {:>10.5} {:>11.3} {:>7.3} {:>12.2} {:>7.3}",
            quality[i].0,
            quality[i].1,
            latency[i][0],
            latency[i][0] / latency[ort][0],
            latency[i][1],
            latency[i][1] / latency[ort][1],
        );
    }
}

/// Loads `model` with the source's tokenizer beside it.
fn load(model: &Path, source: &Path) -> LoadedModel {
    let tokenizer = model.with_file_name("tokenizer.json");
    if !tokenizer.exists() {
        std::fs::copy(source.with_file_name("tokenizer.json"), tokenizer).unwrap();
    }
    LoadedModel::load(model, &ExecutionProviders::cpu(), 0).unwrap()
}
