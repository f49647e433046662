//! One sentence through MiniLM on a Lambda-sized share of the CPU, with ONNX Runtime on one
//! intra-op thread and on two. Lambda shows a function two vCPUs from 128 to 3,008 MB, but gives
//! it CPU time in proportion to its memory (one vCPU's worth at 1,769 MB) and throttles it once
//! that is spent. Each memory size runs in a child process inside a cgroup whose CPU quota is that
//! share (CFS bandwidth control, 100 ms periods), so the two sessions see what a function of that
//! size would: both vCPUs, and the quota. Per size, model and thread count it prints runs back to
//! back (sustained traffic, where the quota binds): their mean, which is what each request is billed
//! and what sets an instance's throughput, and their p99, where the throttled pauses show; and one
//! run every 150 ms (sparse traffic, where it does not): p50 and p99. Thread counts alternate in
//! windows so drift hits both.
//! Needs root and a cgroup cpu controller (v1 or v2); without them it says so and stops.
//!
//! Run: `infra/local/bench.sh lambda` (after the handler bench, which makes the int8 model).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lmaas_engine::{EmbeddingInput, ExecutionProviders, LoadedModel, Runtime};
use ort::session::Session;
use ort::value::{DynValue, Tensor};

/// Lambda memory sizes measured; 3,538 MB is two whole vCPUs, all of this machine's.
const MEMORY_SIZES_MB: [u64; 5] = [1024, 1769, 2048, 3008, 3538];
const PERIOD: Duration = Duration::from_millis(100);
/// Sustained traffic: back-to-back runs in windows of this long, four per thread count.
const SUSTAINED_WINDOW: Duration = Duration::from_millis(1500);
/// Sparse traffic: one run after each pause of this long, 30 per thread count.
const SPARSE_GAP: Duration = Duration::from_millis(150);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--child") {
        return child(args[at + 1].parse().unwrap(), args[at + 2].parse().unwrap(), Path::new(&args[at + 3]));
    }
    let Some(controller) = CpuController::find() else {
        println!("vcpu share: skipped (needs root and a writable cgroup cpu controller)");
        return;
    };
    let visible = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "\"{SENTENCE}\" (MiniLM) per Lambda memory size: CPU quota = memory / {} MB of this machine's {visible} CPUs, {} ms periods",
        lmaas_core::LAMBDA_MB_PER_VCPU,
        PERIOD.as_millis()
    );
    println!(
        "{:<8} {:>6} {:<11} {:>7} {:>10} {:>10} {:>10} {:>10} {:>6}",
        "memory", "vCPUs", "model", "threads", "busy mean", "busy p99", "idle p50", "idle p99", "lmaas"
    );
    for memory in MEMORY_SIZES_MB {
        let share = memory as f64 / lmaas_core::LAMBDA_MB_PER_VCPU as f64;
        let group = controller.create(&format!("lmaas-vcpu-{memory}"), share.min(visible as f64)).unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--child", &memory.to_string(), &visible.to_string(), &group.display().to_string()])
            .status()
            .unwrap();
        controller.remove(&group);
        assert!(status.success(), "the {memory} MB child failed");
    }
}

/// Joins `group`, then measures both thread counts for each model. `visible`: the parent's CPUs
/// (inside the group the standard library counts the quota instead, which Lambda does not show).
fn child(memory: u64, visible: usize, group: &Path) {
    // Before any thread exists, so ORT's pool starts inside the group.
    std::fs::write(group.join("cgroup.procs"), std::process::id().to_string()).unwrap();
    let share = memory as f64 / lmaas_core::LAMBDA_MB_PER_VCPU as f64;
    let chosen = lmaas_core::cpus_for(visible, Some(memory));
    let inputs = sentence_inputs();
    for (label, dir) in models() {
        let mut sessions: Vec<(usize, Session)> = [1, 2].map(|threads| (threads, session(&dir, threads))).into();
        let mut sustained = vec![Vec::new(); 2];
        let mut sparse = vec![Vec::new(); 2];
        for (_, session) in sessions.iter_mut() {
            run(session, &inputs); // warm
        }
        for _ in 0..4 {
            for (i, (_, session)) in sessions.iter_mut().enumerate() {
                let started = Instant::now();
                while started.elapsed() < SUSTAINED_WINDOW {
                    sustained[i].push(run(session, &inputs));
                }
            }
        }
        for _ in 0..30 {
            for (i, (_, session)) in sessions.iter_mut().enumerate() {
                std::thread::sleep(SPARSE_GAP);
                sparse[i].push(run(session, &inputs));
            }
        }
        for (i, (threads, _)) in sessions.iter().enumerate() {
            println!(
                "{:<8} {:>6.2} {label:<11} {threads:>7} {:>10} {:>10} {:>10} {:>10} {:>6}",
                format!("{memory} MB"),
                share,
                ms(sustained[i].iter().sum::<Duration>() / sustained[i].len() as u32),
                ms(pct(&mut sustained[i], 99.0)),
                ms(pct(&mut sparse[i], 50.0)),
                ms(pct(&mut sparse[i], 99.0)),
                if *threads == chosen { "<-" } else { "" },
            );
        }
    }
}

/// fp32 MiniLM, and lmaas int8 when the handler bench has made it.
fn models() -> Vec<(&'static str, PathBuf)> {
    let lmaas = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.lmaas");
    let mut models = vec![("fp32", lmaas.join("samples/minilm"))];
    if lmaas.join("bench/minilm-int8/model.onnx").exists() {
        models.push(("lmaas int8", lmaas.join("bench/minilm-int8")));
    }
    models
}

fn session(dir: &Path, threads: usize) -> Session {
    let builder = Runtime::get().unwrap().session_builder().unwrap();
    builder.with_intra_threads(threads).unwrap().commit_from_file(dir.join("model.onnx")).unwrap()
}

const SENTENCE: &str = "A man is riding a white horse on an enclosed ground.";

/// The sentence's token tensors, tokenized as lmaas tokenizes it.
fn sentence_inputs() -> Vec<(String, Vec<usize>, Vec<i64>)> {
    let dir = models()[0].1.clone();
    let model = LoadedModel::load(&dir.join("model.onnx"), &ExecutionProviders::cpu(), 0).unwrap();
    let tokens = model.token_tensors(&EmbeddingInput::Texts(vec![SENTENCE.into()]), 256).unwrap();
    tokens
        .tensors
        .into_iter()
        .map(|t| {
            let lmaas_core::TensorData::Raw(bytes) = t.data else { panic!("token tensors are raw") };
            let values = bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
            (t.name, t.shape, values)
        })
        .collect()
}

fn run(session: &mut Session, inputs: &[(String, Vec<usize>, Vec<i64>)]) -> Duration {
    let started = Instant::now();
    let values: Vec<(String, DynValue)> = inputs
        .iter()
        .map(|(name, shape, data)| {
            (name.clone(), Tensor::from_array((shape.clone(), data.clone())).unwrap().into_dyn())
        })
        .collect();
    let outputs = session.run(values).unwrap();
    std::hint::black_box(outputs[0].try_extract_tensor::<f32>().unwrap());
    started.elapsed()
}

fn pct(times: &mut [Duration], p: f64) -> Duration {
    times.sort();
    times[((p / 100.0) * (times.len() - 1) as f64).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2}ms", d.as_secs_f64() * 1e3)
}

/// The cgroup CPU controller, v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us`).
enum CpuController {
    V2(PathBuf),
    V1(PathBuf),
}

impl CpuController {
    fn find() -> Option<CpuController> {
        let root = Path::new("/sys/fs/cgroup");
        let v2 = std::fs::read_to_string(root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"));
        let found = if v2 {
            // Children get the cpu controller only when the parent hands it down.
            std::fs::write(root.join("cgroup.subtree_control"), "+cpu").ok()?;
            CpuController::V2(root.to_path_buf())
        } else if root.join("cpu/cpu.cfs_quota_us").exists() {
            CpuController::V1(root.join("cpu"))
        } else {
            return None;
        };
        // Writable only as root.
        let probe = found.create("lmaas-vcpu-probe", 1.0).ok()?;
        found.remove(&probe);
        Some(found)
    }

    fn create(&self, name: &str, cpus: f64) -> std::io::Result<PathBuf> {
        let quota = (cpus * PERIOD.as_micros() as f64).round() as u64;
        let period = PERIOD.as_micros();
        let (CpuController::V2(root) | CpuController::V1(root)) = self;
        let group = root.join(name);
        std::fs::create_dir_all(&group)?;
        match self {
            CpuController::V2(_) => std::fs::write(group.join("cpu.max"), format!("{quota} {period}"))?,
            CpuController::V1(_) => {
                std::fs::write(group.join("cpu.cfs_period_us"), period.to_string())?;
                std::fs::write(group.join("cpu.cfs_quota_us"), quota.to_string())?;
            }
        }
        Ok(group)
    }

    fn remove(&self, group: &Path) {
        let _ = std::fs::remove_dir(group);
    }
}
