//! Concurrent /v1/embeddings requests share session runs and get exactly their own answers.

use std::path::PathBuf;
use std::sync::{Arc, Barrier};

use lmaas_engine::{EmbeddingConfig, EmbeddingInput, ExecutionProviders, LoadedModel};

#[test]
fn concurrent_requests_are_batched_and_each_gets_its_own_embeddings() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.lmaas/samples/minilm/model.onnx");
    let model = Arc::new(LoadedModel::load(&path, &ExecutionProviders::cpu(), 0).unwrap());
    let config = EmbeddingConfig::default();
    let requests: Vec<Vec<String>> = (0..12)
        .map(|i| (0..1 + i % 3).map(|j| format!("request {i} sentence {j}: {}", "words ".repeat(i * 2 + j))).collect())
        .collect();
    let alone: Vec<_> = requests
        .iter()
        .map(|texts| model.embed(&EmbeddingInput::Texts(texts.clone()), &config, None).unwrap())
        .collect();

    let start = Arc::new(Barrier::new(requests.len()));
    let threads: Vec<_> = requests
        .iter()
        .cloned()
        .map(|texts| {
            let (model, config, start) = (model.clone(), config.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                model.embed_batched(EmbeddingInput::Texts(texts), &config, None).unwrap()
            })
        })
        .collect();
    for (thread, expected) in threads.into_iter().zip(&alone) {
        let got = thread.join().unwrap();
        assert_eq!(got.prompt_tokens, expected.prompt_tokens);
        assert_eq!(got.vectors.len(), expected.vectors.len());
        for (a, b) in got.vectors.iter().zip(&expected.vectors) {
            let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "batched and alone differ by {worst}");
        }
    }
    let (served, runs) = model.batching_counts();
    assert_eq!(served, 12);
    assert!(runs < 12, "12 concurrent requests took {runs} runs: nothing was batched");

    // A bad request in a batch fails alone.
    let bad = model.embed_batched(EmbeddingInput::Tokens(vec![vec![999_999]]), &config, None).unwrap_err();
    assert!(bad.to_string().contains("outside the vocabulary"), "{bad}");
}
