//! Text generation on the real SmolLM2-135M sample through ONNX Runtime, against llama.cpp on the
//! same GGUF (`samples/fixtures/smollm2_reference.json`, made by samples/models/llama_reference.py).

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::OnceLock;

use lmaas_engine::{
    ChatMessage, ExecutionProviders, FinishReason, GenerateParams, GenerationConfig, LoadedModel, Sampling,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    f32: Run,
}

#[derive(Deserialize)]
struct Run {
    cases: Vec<Case>,
    perplexity: Perplexity,
}

#[derive(Deserialize)]
struct Case {
    messages: Vec<ChatMessage>,
    prompt: String,
    prompt_tokens: Vec<u32>,
    tokens: Vec<u32>,
}

#[derive(Deserialize)]
struct Perplexity {
    tokens: Vec<u32>,
    value: f64,
}

fn sample_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.lmaas/samples/smollm2")
}

fn reference() -> Reference {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../samples/fixtures/smollm2_reference.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// One model shared by the tests, one test at a time (they count its active sequences).
fn model() -> (std::sync::MutexGuard<'static, ()>, &'static (LoadedModel, GenerationConfig)) {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    (guard, loaded())
}

fn loaded() -> &'static (LoadedModel, GenerationConfig) {
    static MODEL: OnceLock<(LoadedModel, GenerationConfig)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let model = LoadedModel::load(&sample_dir().join("model.onnx"), &ExecutionProviders::cpu(), 0).unwrap();
        let task: serde_json::Value =
            serde_json::from_slice(&std::fs::read(sample_dir().join("lmaas.json")).unwrap()).unwrap();
        let config = GenerationConfig::from_manifest_config(&serde_json::json!({ "task": task })).unwrap().unwrap();
        (model, config)
    })
}

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams { max_tokens, sampling: Sampling::GREEDY, stop: vec![] }
}

#[test]
fn greedy_decoding_matches_llama_cpp_token_for_token() {
    let (_serial, (model, config)) = model();
    let reference = reference();
    assert!(reference.f32.cases.iter().filter(|c| c.tokens.len() == 32).count() >= 5);
    for case in &reference.f32.cases {
        let prompt = config.render_chat(&case.messages).unwrap();
        assert_eq!(prompt, case.prompt, "the chat template renders as Jinja does");
        let tokens = model.encode_prompt(&prompt).unwrap();
        assert_eq!(tokens, case.prompt_tokens, "tokenizer.json tokenizes as llama.cpp does");
        let generated = model.generate(&tokens, &greedy(32), config, |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(generated.tokens, case.tokens, "{:?}", case.messages.last().unwrap().content);
        let finish = if case.tokens.len() < 32 { FinishReason::Stop } else { FinishReason::Length };
        assert_eq!(generated.finish_reason, finish);
    }
}

#[test]
fn perplexity_matches_llama_cpp() {
    let (_serial, (model, _)) = model();
    let reference = reference().f32.perplexity;
    let ours = model.perplexity(&reference.tokens).unwrap();
    eprintln!("perplexity: lmaas {ours:.4}, llama.cpp {:.4}", reference.value);
    assert!((ours / reference.value - 1.0).abs() < 0.005, "{ours} vs {}", reference.value);
}

#[test]
fn streamed_text_concatenates_to_the_answer_and_seeds_repeat() {
    let (_serial, (model, config)) = model();
    let prompt = model
        .encode_prompt(
            &config.render_chat(&[ChatMessage { role: "user".into(), content: "Tell me about cats.".into() }]).unwrap(),
        )
        .unwrap();
    let sampled = |seed| GenerateParams {
        max_tokens: 24,
        sampling: Sampling { temperature: 0.9, top_p: 0.95, top_k: 40, seed: Some(seed) },
        stop: vec![],
    };
    let mut pieces = Vec::new();
    let first = model
        .generate(&prompt, &sampled(11), config, |text| {
            pieces.push(text.to_string());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(pieces.concat(), first.text);
    assert!(pieces.len() > 5, "text arrives token by token: {pieces:?}");
    let again = model.generate(&prompt, &sampled(11), config, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(again.tokens, first.tokens, "same seed, same answer");
    let other = model.generate(&prompt, &sampled(12), config, |_| ControlFlow::Continue(())).unwrap();
    assert_ne!(other.tokens, first.tokens, "another seed, another answer");
}

#[test]
fn stop_sequences_and_max_tokens_end_the_answer() {
    let (_serial, (model, config)) = model();
    let reference = reference();
    let case = reference.f32.cases.iter().find(|c| c.prompt.contains("primary colors")).unwrap();
    let full = model.generate(&case.prompt_tokens, &greedy(32), config, |_| ControlFlow::Continue(())).unwrap();
    assert!(full.text.contains("\n\n"), "{:?}", full.text);
    let stop = GenerateParams { stop: vec!["\n\n".into()], ..greedy(32) };
    let stopped = model.generate(&case.prompt_tokens, &stop, config, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    assert_eq!(stopped.text, full.text.split("\n\n").next().unwrap());
    let short = model.generate(&case.prompt_tokens, &greedy(3), config, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!((short.tokens.as_slice(), short.finish_reason), (&full.tokens[..3], FinishReason::Length));
}

#[test]
fn a_consumer_that_stops_listening_stops_generation_and_frees_the_sequence() {
    let (_serial, (model, config)) = model();
    let reference = reference();
    let case = reference.f32.cases.iter().find(|c| c.tokens.len() == 32).unwrap();
    let mut chunks = 0;
    let generated = model
        .generate(&case.prompt_tokens, &greedy(32), config, |_| {
            chunks += 1;
            assert_eq!(model.active_sequences(), 1);
            if chunks == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(generated.finish_reason, FinishReason::Cancelled);
    assert!(generated.tokens.len() < 10, "{} tokens", generated.tokens.len());
    assert_eq!(model.active_sequences(), 0);
}

#[test]
fn continuous_batching_gives_every_prompt_its_own_answer() {
    let (_serial, (model, config)) = model();
    let reference = reference();
    // 9 prompts, 4 at a time: answers that end early (7 to 11 tokens) make room for the next
    // prompt between steps, so rows leave and join the batch while others are mid-answer.
    let items: Vec<_> = reference.f32.cases.iter().map(|c| (c.prompt_tokens.clone(), greedy(32))).collect();
    let mut answers = vec![None; items.len()];
    let mut order = Vec::new();
    model
        .generate_many(&items, config, 4, |index, result| {
            assert!(model.active_sequences() <= 4);
            order.push(index);
            answers[index] = Some(result.unwrap());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_ne!(order, (0..items.len()).collect::<Vec<_>>(), "short answers finish first");
    for (case, answer) in reference.f32.cases.iter().zip(answers) {
        let answer = answer.expect("every item is answered");
        assert_eq!(answer.tokens, case.tokens, "{:?}", case.messages.last().unwrap().content);
        assert_eq!(answer.prompt_tokens, case.prompt_tokens.len());
    }
    assert_eq!(model.active_sequences(), 0);
    // An empty prompt fails alone; a `Break` stops the batch.
    let items = vec![(vec![], greedy(4)), (reference.f32.cases[0].prompt_tokens.clone(), greedy(4))];
    let mut results = Vec::new();
    model
        .generate_many(&items, config, 2, |i, r| {
            results.push((i, r.is_ok()));
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(results, vec![(0, false), (1, true)]);
    let stopped = model.generate_many(&items[1..], config, 2, |_, _| ControlFlow::Break(()));
    assert!(matches!(stopped, Err(lmaas_engine::EngineError::Cancelled)));
    assert_eq!(model.active_sequences(), 0);
}
