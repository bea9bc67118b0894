use super::*;
use proptest::prelude::*;

/// A deterministic standard normal sequence (xorshift64* and Box-Muller).
struct Normal(u64);

impl Normal {
    fn new(seed: u64) -> Normal {
        Normal(seed.max(1))
    }

    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        (bits as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    fn point(&mut self) -> [f32; FEATURES] {
        std::array::from_fn(|_| self.next())
    }
}

fn config() -> ModelConfig {
    ModelConfig::default()
}

/// A model that has seen `windows` windows of standard normal points.
fn trained(config: &ModelConfig, normal: &mut Normal, windows: u32) -> HalfSpaceTrees {
    let mut model = HalfSpaceTrees::new(config);
    for _ in 0..windows * config.window {
        model.check(&normal.point());
    }
    model
}

#[test]
fn the_same_seed_and_stream_give_the_same_scores_bit_for_bit() {
    let config = config();
    let (mut a, mut b) = (HalfSpaceTrees::new(&config), HalfSpaceTrees::new(&config));
    assert_eq!(a, b);
    let (mut na, mut nb) = (Normal::new(3), Normal::new(3));
    let mut scored = 0;
    for i in 0..(5 * config.window) {
        let (pa, pb) = (na.point(), nb.point());
        let (sa, sb) = (a.score(&pa), b.score(&pb));
        assert_eq!(sa.to_bits(), sb.to_bits(), "{i}");
        scored += usize::from(sa > 0.0);
        assert_eq!(a.check(&pa), b.check(&pb), "{i}");
    }
    assert_eq!(a, b);
    assert!(scored > 100, "the scores were all 0: {scored}");
    // Another seed grows other trees.
    let other = HalfSpaceTrees::new(&ModelConfig {
        seed: config.seed + 1,
        ..config
    });
    assert_ne!(other.nodes, HalfSpaceTrees::new(&config).nodes);
}

#[test]
fn the_bulk_scores_low_and_far_outliers_fire() {
    let config = config();
    let mut normal = Normal::new(1);
    let mut model = trained(&config, &mut normal, config.warm_windows);
    assert!(model.is_warm());
    let mut scores = Vec::new();
    let mut fired = 0;
    for _ in 0..20_000 {
        let p = normal.point();
        scores.push(model.score(&p));
        fired += usize::from(model.check(&p).is_some());
    }
    scores.sort_by(f32::total_cmp);
    // Half the bulk is as dense as typical or denser; the thousandth rarest is still
    // far under the limit, and nothing fired.
    assert_eq!(scores[scores.len() / 2], 0.0);
    assert!(
        scores[scores.len() * 999 / 1000] < 0.7,
        "{:?}",
        &scores[19_900..]
    );
    assert_eq!(fired, 0);
    // Points far out in several features at once: no reference point near them.
    for p in [
        [FEATURE_MAX; FEATURES],
        [6.0, -6.0, 6.0, -6.0, 6.0, -6.0],
        [-7.0, 7.0, -7.0, 7.0, 0.0, 0.0],
    ] {
        let score = model.score(&p);
        assert!(score > 0.99, "{p:?}: {score}");
        let signal = model.check(&p);
        assert_eq!(
            signal,
            Some(Signal {
                detector: Detector::Model,
                strength: 1.0
            }),
            "{p:?}"
        );
    }
}

/// The resolution the module docs quote, with the defaults and standard normal features:
/// far out in several features scores near 1, moderately out in several or far out in one
/// stays under the limit.
#[test]
fn the_resolution_of_the_defaults() {
    let config = config();
    let mut normal = Normal::new(10);
    let model = trained(&config, &mut normal, 4);
    let score = |p: [f32; FEATURES]| model.score(&p);
    let all = |v: f32| [v; FEATURES];
    for (p, low, high) in [
        (all(8.0), 0.99, 1.0),
        ([6.0, -6.0, 6.0, -6.0, 6.0, -6.0], 0.99, 1.0),
        (all(4.0), 0.6, 0.95),
        ([5.0, 5.0, 5.0, 0.0, 0.0, 0.0], 0.3, 0.9),
        ([8.0, 0.0, 0.0, 0.0, 0.0, 0.0], 0.1, 0.9),
        (all(0.0), 0.0, 0.05),
    ] {
        let s = score(p);
        println!("{p:?}: {s}");
        assert!(
            (low..=high).contains(&s),
            "{p:?}: {s} not in [{low}, {high}]"
        );
    }
}

#[test]
#[ignore = "exploration: prints the score profile of a few shapes"]
fn explore() {
    for (trees, depth) in [(16u32, 8u32), (25, 8), (12, 10), (16, 10)] {
        let config = ModelConfig {
            depth,
            trees,
            ..ModelConfig::default()
        };
        let mut normal = Normal::new(1);
        let mut model = trained(&config, &mut normal, 3);
        let mut scores: Vec<f32> = Vec::new();
        for _ in 0..20_000 {
            let p = normal.point();
            scores.push(model.score(&p));
            model.check(&p);
        }
        scores.sort_by(f32::total_cmp);
        let q = |f: f64| scores[((scores.len() as f64 - 1.0) * f) as usize];
        println!(
            "trees {trees} depth {depth}: bulk median {:.3} q99 {:.3} q999 {:.3} max {:.3}",
            q(0.5),
            q(0.99),
            q(0.999),
            q(1.0)
        );
        for p in [
            [8.0f32; 6],
            [6.0, -6.0, 6.0, -6.0, 6.0, -6.0],
            [4.0; 6],
            [-7.0, 7.0, -7.0, 7.0, 0.0, 0.0],
            [5.0, 5.0, 5.0, 0.0, 0.0, 0.0],
            [5.0, -5.0, 0.0, 0.0, 0.0, 0.0],
            [8.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 6.0, 0.0, 0.0, 0.0],
        ] {
            println!("  {p:?}: {:.4}", model.score(&p));
        }
    }
}

#[test]
fn a_point_at_the_limit_fires_at_half_strength() {
    let config = config();
    let mut normal = Normal::new(2);
    let model = trained(&config, &mut normal, config.warm_windows);
    // The strength follows the rarity, 1 / (1 - score), against 1 / (1 - score_min).
    let at_limit = model.strength(config.score_min);
    assert!((at_limit - 0.5).abs() < 1e-6, "{at_limit}");
    let twice_as_rare = 1.0 - (1.0 - config.score_min) / 2.0;
    assert!((model.strength(twice_as_rare) - 1.0).abs() < 1e-5);
    assert_eq!(model.strength(1.0), 1.0);
}

#[test]
fn nothing_fires_before_the_warm_windows() {
    let config = config();
    let mut model = HalfSpaceTrees::new(&config);
    let mut normal = Normal::new(4);
    // Before any complete window there is no reference: every score is 0.
    assert_eq!(model.score(&[FEATURE_MAX; FEATURES]), 0.0);
    for i in 0..(config.warm_windows * config.window) {
        let p = if i % 7 == 0 {
            [FEATURE_MAX; FEATURES]
        } else {
            normal.point()
        };
        assert_eq!(model.check(&p), None, "{i}");
    }
    assert!(model.is_warm());
    assert_eq!(model.windows(), config.warm_windows);
    assert!(model.check(&[-FEATURE_MAX; FEATURES]).is_some());
}

#[test]
fn a_new_normal_becomes_the_reference_after_a_window() {
    let config = config();
    let mut normal = Normal::new(5);
    let mut model = trained(&config, &mut normal, 3);
    let shifted = |normal: &mut Normal| normal.point().map(|x| x + 7.0);
    let mut fired_in = [0u32; 4];
    for (w, fired) in fired_in.iter_mut().enumerate() {
        for _ in 0..config.window {
            let _ = w;
            *fired += u32::from(model.check(&shifted(&mut normal)).is_some());
        }
    }
    // The whole first window of the new normal is rare; two windows later it is the
    // reference.
    assert!(fired_in[0] > config.window * 9 / 10, "{fired_in:?}");
    assert!(fired_in[2] < config.window / 100 + 1, "{fired_in:?}");
}

#[test]
fn the_typical_mass_is_the_mean_mass_of_the_reference_points() {
    let config = ModelConfig {
        window: 100,
        ..config()
    };
    let mut model = HalfSpaceTrees::new(&config);
    let mut normal = Normal::new(6);
    let window: Vec<_> = (0..config.window).map(|_| normal.point()).collect();
    for p in &window {
        model.update(p);
    }
    assert_eq!(model.windows(), 1);
    let mean = window.iter().map(|p| model.walk(p, None)).sum::<f64>()
        / f64::from(config.window)
        / f64::from(model.trees);
    assert!(model.typical_mass > 0.0);
    assert!(
        (mean - model.typical_mass).abs() < 1e-9 * mean,
        "{mean} {}",
        model.typical_mass
    );
}

/// The paper's per-point mass, node by node down one tree after another: the count at the
/// first node under the size limit, or at the leaf, times 2^level.
fn mass_node_by_node(model: &HalfSpaceTrees, point: &[f32; FEATURES]) -> f64 {
    let stride = 1usize << (model.depth + 1);
    let limit = model.size_limit();
    let mut total = 0u64;
    for tree in model.nodes.chunks_exact(stride) {
        let mut i = 1;
        for level in 0..=model.depth {
            let node = tree[i];
            if node.r < limit || level == model.depth {
                total += u64::from(node.r) << level;
                break;
            }
            let x = clamp_feature(point[usize::from(node.feature)]);
            i = 2 * i + usize::from(x >= node.at);
        }
    }
    total as f64
}

#[test]
fn the_walk_gives_the_mass_of_the_paper_node_by_node() {
    // Trees in whole groups of lanes and not, shallow and deep, small and large windows.
    for (trees, depth, window) in [(16, 8, 256), (7, 5, 50), (25, 10, 1000), (1, 1, 10)] {
        let config = ModelConfig {
            trees,
            depth,
            window,
            ..config()
        };
        let mut normal = Normal::new(u64::from(trees * depth));
        let mut model = HalfSpaceTrees::new(&config);
        let mut walked = 0;
        for i in 0..4 * window {
            let mut p = normal.point();
            // A few far out and odd points among them.
            match i % 97 {
                0 => p = [FEATURE_MAX; FEATURES],
                1 => p[2] = 6.0,
                2 => p[0] = f32::NAN,
                _ => {}
            }
            let mass = model.walk(&p, None);
            assert_eq!(mass, mass_node_by_node(&model, &p), "{trees} {depth} {i}");
            walked += usize::from(mass > 0.0);
            model.check(&p);
        }
        assert!(walked > window as usize, "{trees} {depth}: {walked}");
    }
}

#[test]
fn non_finite_features_are_the_range_edges() {
    let config = config();
    let mut normal = Normal::new(7);
    let model = trained(&config, &mut normal, 2);
    let p = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, 1e30, -1e30];
    let edges = [
        FEATURE_MAX,
        FEATURE_MAX,
        -FEATURE_MAX,
        0.0,
        FEATURE_MAX,
        -FEATURE_MAX,
    ];
    assert_eq!(model.score(&p).to_bits(), model.score(&edges).to_bits());
}

#[test]
fn a_checkpoint_restores_a_model_that_scores_exactly_as_the_original() {
    let config = config();
    let mut normal = Normal::new(8);
    // Mid-window, so the latest window's leaves are part of the state.
    let mut original = trained(&config, &mut normal, 2);
    for _ in 0..(config.window / 3) {
        original.check(&normal.point());
    }
    let json = serde_json::to_string(&original).unwrap();
    let mut restored: HalfSpaceTrees = serde_json::from_str(&json).unwrap();
    assert_eq!(restored, original);
    for i in 0..(3 * config.window) {
        let p = if i % 50 == 0 {
            [FEATURE_MAX; FEATURES]
        } else {
            normal.point()
        };
        assert_eq!(
            original.score(&p).to_bits(),
            restored.score(&p).to_bits(),
            "{i}"
        );
        assert_eq!(original.check(&p), restored.check(&p), "{i}");
    }
    assert_eq!(restored, original);
}

#[test]
fn an_inconsistent_checkpoint_is_refused() {
    let model = HalfSpaceTrees::new(&config());
    let good = serde_json::to_value(&model).unwrap();
    let mut bad_leaf = good.clone();
    bad_leaf["leaves"][0] = serde_json::json!(1 << 8);
    let mut bad_feature = good.clone();
    bad_feature["nodes"][1]["feature"] = serde_json::json!(FEATURES);
    let mut short = good.clone();
    short["nodes"].as_array_mut().unwrap().pop();
    let mut deep = good.clone();
    deep["depth"] = serde_json::json!(DEPTH_MAX + 1);
    let mut full = good.clone();
    full["filled"] = good["window"].clone();
    for bad in [bad_leaf, bad_feature, short, deep, full] {
        assert!(serde_json::from_value::<HalfSpaceTrees>(bad).is_err());
    }
    assert!(serde_json::from_value::<HalfSpaceTrees>(good).is_ok());
}

#[test]
fn memory_is_fixed_at_construction() {
    let config = config();
    let mut model = HalfSpaceTrees::new(&config);
    let bytes = model.state_bytes();
    // Nodes of 8 bytes, 2^(depth+1) per tree; a u16 leaf per tree and window point; a u32
    // mass per tree and leaf; an f32 split point and a u8 feature per tree and 2^depth.
    let trees = config.trees as usize;
    assert_eq!(
        bytes,
        trees * (8 << (config.depth + 1))
            + trees * config.window as usize * 2
            + trees * (4 << config.depth)
            + trees * (5 << config.depth)
    );
    let capacity = (
        model.nodes.capacity(),
        model.leaves.capacity(),
        model.leaf_mass.capacity(),
    );
    let mut normal = Normal::new(9);
    for _ in 0..(3 * config.window + 17) {
        model.check(&normal.point());
    }
    assert_eq!(
        (
            model.nodes.capacity(),
            model.leaves.capacity(),
            model.leaf_mass.capacity()
        ),
        capacity
    );
    assert_eq!(model.state_bytes(), bytes);
}

#[test]
fn out_of_range_shapes_are_clamped() {
    let model = HalfSpaceTrees::new(&ModelConfig {
        trees: 0,
        depth: 0,
        window: 0,
        warm_windows: 0,
        score_min: f32::NAN,
        ..config()
    });
    assert_eq!((model.trees, model.depth, model.window), (1, 1, WINDOW_MIN));
    assert_eq!((model.warm_windows, model.score_min), (1, 1.0));
    let model = HalfSpaceTrees::new(&ModelConfig {
        trees: TREES_MAX + 1,
        depth: DEPTH_MAX + 1,
        window: WINDOW_MAX + 1,
        score_min: 2.0,
        ..config()
    });
    assert_eq!(
        (model.trees, model.depth, model.window, model.score_min),
        (TREES_MAX, DEPTH_MAX, WINDOW_MAX, 1.0)
    );
}

proptest! {
    #[test]
    fn no_input_panics_and_scores_and_strengths_are_in_the_unit_interval(
        points in proptest::collection::vec(
            proptest::array::uniform6(prop_oneof![
                -20.0f32..20.0,
                Just(f32::NAN),
                Just(f32::INFINITY),
                Just(f32::NEG_INFINITY),
                Just(f32::MAX),
                Just(-0.0f32),
            ]),
            1..200,
        ),
        trees in 0u32..6,
        depth in 0u32..8,
        window in 0u32..40,
        seed in any::<u64>(),
        score_min in prop_oneof![0.0f32..=1.0, Just(f32::NAN), Just(2.0f32), Just(-1.0f32)],
        warm_windows in 0u32..3,
    ) {
        let config = ModelConfig { trees, depth, window, seed, score_min, warm_windows };
        let mut model = HalfSpaceTrees::new(&config);
        for p in &points {
            let score = model.score(p);
            prop_assert!((0.0..=1.0).contains(&score), "{}", score);
            if let Some(signal) = model.check(p) {
                prop_assert_eq!(signal.detector, Detector::Model);
                prop_assert!((0.0..=1.0).contains(&signal.strength), "{:?}", signal);
            }
        }
        // And the state survives a checkpoint.
        let json = serde_json::to_string(&model).unwrap();
        let restored: HalfSpaceTrees = serde_json::from_str(&json).unwrap();
        prop_assert!(restored == model, "the checkpoint changed the model");
    }
}
