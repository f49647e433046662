//! train_classifier's pieces through ONNX Runtime: a head trained on scikit-learn's digits beats
//! scikit-learn's LogisticRegression on the same split; a head appended to MiniLM computes the
//! same probabilities from token ids as the head applied to MiniLM's embeddings.

use std::path::PathBuf;

use lmaas_core::{DataType, Tensor, TensorData};
use lmaas_engine::train::{argmax, train, LabeledData, TrainConfig};
use lmaas_engine::{EmbeddingConfig, EmbeddingInput, ExecutionProviders, LoadedModel};
use lmaas_onnx::classifier::{self, ClassifierHead, Pooling};
use prost::bytes::Bytes;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn digits(split: &str) -> LabeledData {
    let raw = std::fs::read_to_string(root().join(format!("samples/fixtures/digits_{split}.jsonl"))).unwrap();
    let mut data = LabeledData::default();
    for line in raw.lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        data.features.push(row["features"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect());
        data.labels.push(row["label"].as_str().unwrap().to_string());
    }
    data
}

fn load(model: &lmaas_onnx::proto::ModelProto, dir: &std::path::Path) -> LoadedModel {
    let path = dir.join("model.onnx");
    std::fs::write(&path, lmaas_onnx::encode(model)).unwrap();
    LoadedModel::load(&path, &ExecutionProviders::cpu(), 0).unwrap()
}

fn floats(tensor: &Tensor) -> Vec<f32> {
    match &tensor.data {
        TensorData::Raw(bytes) => bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_digits_head_beats_logistic_regression_on_the_same_split() {
    let (head, report) = train(&digits("train"), &TrainConfig::default(), &mut |_, _, _| true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = load(&classifier::head_model(&head), dir.path());
    let test = digits("test");
    let rows = test.features.len();
    let input = Tensor {
        name: "features".into(),
        datatype: DataType::Fp32,
        shape: vec![rows, 64],
        data: TensorData::Raw(test.features.iter().flatten().flat_map(|v| v.to_le_bytes()).collect()),
    };
    let outputs = model.run(&[input], &["probabilities".into(), "label".into()]).unwrap();
    let probabilities = floats(&outputs[0]);
    let mut correct = 0;
    for (row, label) in probabilities.chunks(head.classes.len()).zip(&test.labels) {
        correct += usize::from(&head.classes[argmax(row)] == label);
    }
    let accuracy = correct as f64 / rows as f64;
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("samples/fixtures/digits.json")).unwrap()).unwrap();
    let sklearn = reference["logistic_regression_test_accuracy"].as_f64().unwrap();
    eprintln!("test accuracy {accuracy:.4} vs scikit-learn {sklearn:.4}; best epoch {}", report.best_epoch);
    assert!(accuracy >= sklearn, "{accuracy} < scikit-learn's {sklearn}");
    assert_eq!(outputs[1].datatype, DataType::Int64, "label is the argmax index");
}

#[test]
fn a_head_appended_to_minilm_matches_the_head_on_its_embeddings() {
    let minilm = root().join(".lmaas/samples/minilm");
    let base = LoadedModel::load(&minilm.join("model.onnx"), &ExecutionProviders::cpu(), 0).unwrap();
    let config = EmbeddingConfig::default();
    let texts: Vec<String> = [
        "The striker scored twice in the second half.",
        "Whisk the eggs with sugar until pale.",
        "The central bank raised interest rates again.",
        "A quick lunch: toast, avocado and a boiled egg",
        "Goalkeepers wear gloves.",
        "Shares fell sharply after the earnings call.",
    ]
    .map(String::from)
    .to_vec();
    let embeddings = base.embed(&EmbeddingInput::Texts(texts.clone()), &config, None).unwrap().vectors;
    let data = LabeledData {
        features: embeddings.iter().cycle().take(36).cloned().collect(),
        labels: ["sport", "food", "money"].iter().cycle().take(36).map(|s| s.to_string()).collect(),
    };
    let (head, _) = train(&data, &TrainConfig { max_epochs: 20, ..Default::default() }, &mut |_, _, _| true).unwrap();

    let raw = std::fs::read(minilm.join("model.onnx")).unwrap();
    let merged = classifier::attach_to_base(
        lmaas_onnx::decode(Bytes::from(raw)).unwrap(),
        "last_hidden_state",
        true,
        Pooling::Mean,
        true,
        &head,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(minilm.join("tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    let model = load(&merged, dir.path());
    let tokens = model.token_tensors(&EmbeddingInput::Texts(texts.clone()), 256).unwrap().tensors;
    let from_tokens = floats(&model.run(&tokens, &["probabilities".into()]).unwrap()[0]);
    for (i, embedding) in embeddings.iter().enumerate() {
        let expected = apply(&head, embedding);
        let actual = &from_tokens[i * 3..(i + 1) * 3];
        for (a, e) in actual.iter().zip(&expected) {
            assert!((a - e).abs() < 1e-4, "text {i}: {actual:?} vs {expected:?}");
        }
    }
}

/// The head in plain Rust: standardize, dense + ReLU, dense, softmax.
fn apply(head: &ClassifierHead, x: &[f32]) -> Vec<f32> {
    let mut h: Vec<f32> = x.iter().zip(&head.mean).zip(&head.std).map(|((v, m), s)| (v - m) / s).collect();
    for (i, (weight, bias)) in head.layers.iter().enumerate() {
        let mut out = bias.clone();
        for (j, v) in h.iter().enumerate() {
            out.iter_mut().zip(&weight[j * bias.len()..(j + 1) * bias.len()]).for_each(|(o, w)| *o += v * w);
        }
        if i + 1 < head.layers.len() {
            out.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        h = out;
    }
    let max = h.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let sum: f32 = h.iter().map(|v| (v - max).exp()).sum();
    h.iter().map(|v| (v - max).exp() / sum).collect()
}
