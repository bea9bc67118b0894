//! The learned streaming model: half-space trees (Tan, Ting & Liu, "Fast anomaly detection
//! for streaming data", IJCAI 2011) over a few per-reading features.
//!
//! # What it does
//!
//! The caller computes [`FEATURES`] numbers per reading from its per-device state (a
//! standardised residual, |Δ| over the noise, a local noise ratio, an interval ratio, a clock
//! offset, a peer z...). The model learns which *combinations* are usual and scores how
//! rare this one is. The per-feature detectors already catch one feature far out; this one
//! is for readings that are a little odd in several ways at once.
//!
//! # How
//!
//! - `trees` random binary trees of `depth` levels cut the feature space
//!   [-[`FEATURE_MAX`], [`FEATURE_MAX`]]^[`FEATURES`] into half-spaces: every internal node
//!   splits a random feature at a uniform point of the middle 70 % of its node's range.
//!   Features and split points come from a seeded xorshift: same seed, same trees. (The
//!   paper splits at the middle of a randomly enlarged work space; with clamped features
//!   about half of those splits fall outside the range and separate nothing, so this
//!   follows River's `HalfSpaceTrees`, which draws the split within the padded range. With
//!   the paper's splits a point 7 out in four features scored 0.70; with these, 0.9996.)
//! - Each node has the count `r` of the points of the previous complete window (the
//!   *reference*) that passed through it. The points of the window being filled are kept
//!   as the leaf each reached in each tree; every `window` points they become the new
//!   reference (a leaf's count is the points that reached it, an internal node's the sum
//!   of its children's: the paper's per-node counting, done once per window instead of
//!   once per visited node). The model forgets at the pace of one window.
//! - A point's mass in one tree is `r · 2^k` at its terminal node: the first node on its
//!   path with `r < window / 10` (the paper's size limit), or the leaf, `k` its depth. It
//!   estimates the reference density around the point (times the space's volume). A leaf
//!   has one path from the root, so its terminal node, and the mass of every point that
//!   reaches it, are known from the counts alone: they are computed for every leaf at each
//!   swap, and a walk only follows the splits down and reads its leaf's mass (a test holds
//!   it equal to the paper's node-by-node walk).
//! - **Score.** `score = 1 - m / m_typical`, clamped to [0, 1], where `m` is the point's
//!   mass averaged over the trees and `m_typical` the mass a point drawn from the reference
//!   window itself gets on average (computed from the counts at each swap, so it is exact
//!   and costs nothing per reading). 0: as dense as a typical point or denser; 1: no
//!   reference point near it in any tree. `1 - score` is the density ratio: 0.9 reads "ten
//!   times rarer than a typical reading".
//! - [`HalfSpaceTrees::check`] scores then learns the point; it fires [`Detector::Model`]
//!   only once `warm_windows` windows have completed and `score >= score_min`, with
//!   strength [`strength_over`]`(rarity, 1 / (1 - score_min))` where `rarity = 1 / (1 -
//!   score)`: 0.5 at the limit, 1 when twice as rare or when no tree has mass there.
//!
//! # Features
//!
//! Features must be roughly scale-free (standardised per device: a unit is about one
//! honest standard deviation) because one model serves many devices and its space is
//! fixed. Each is clamped to [-[`FEATURE_MAX`], [`FEATURE_MAX`]] before use; NaN counts as
//! the top edge (a feature that cannot be computed is suspect), ±∞ as the matching edge.
//! Nothing panics on any input.
//!
//! # What it catches and misses (defaults, standard normal features; test
//! `the_resolution_of_the_defaults`)
//!
//! - Caught: points far out in several features together (8 in all: 0.9998; ±6
//!   alternating: 0.998; 7 out in four: 0.9996). The bulk stays far below the limit (20 000
//!   points: median 0, 99.9th percentile 0.65, highest 0.78; none fired).
//! - Missed: one feature alone far out (8 out in one: 0.63; the per-feature detectors are
//!   the ones for that), moderate combinations (4 out in all six: 0.86; 5 in three: 0.86).
//!   With `depth` splits shared by [`FEATURES`] features a path splits each feature only
//!   about `depth / FEATURES` times.
//! - A new normal (a fleet, a firmware) scores high for about one window and then is the
//!   reference; so does a fraud lasting more than a window. The model is a hint at onset,
//!   not a memory (its weight is below the other detectors'). Heavy-tailed honest features
//!   reach the limit more often than normal ones: standardise them.
//!
//! # Cost and state
//!
//! - Per reading one walk of `trees · depth` split visits, eight trees side by side,
//!   branch-free, then one mass per tree looked up; scoring and learning share it (the
//!   leaf reached is what learning keeps). The walk reads the splits from their own
//!   arrays (a split point and a feature, 5 bytes, no counts and no leaves), so more of
//!   the trees stay in the nearest cache. Every `window` readings, a few passes over the
//!   nodes for the swap and the leaves' masses. About 0.2 µs per check and 0.17 µs per
//!   score with the defaults in release, against 0.36-0.55 and 0.30-0.37 for the walk
//!   that read every node's count (`shards/tests/fraud_cost.rs`, side by side on this
//!   shared machine, 2026-12-01).
//! - Every reading is scored and learned: a sample would save only the swap (the walk is
//!   needed for the score anyway) and would stretch a window over more readings.
//! - State: `trees · 2^(depth+1)` nodes of 8 bytes, `trees · window` leaves of 2 bytes,
//!   `trees · 2^depth` leaf masses of 4 bytes and as many splits of 5 bytes, allocated
//!   once by [`HalfSpaceTrees::new`] (108 KiB with the defaults); nothing is allocated per
//!   reading.
//! - Serde-serialisable for checkpoints, checked on the way back in; a restored model
//!   scores exactly as the original did (the counts and leaves are integers, the split
//!   points f32 that round-trip, the typical mass and the leaves' masses recomputed
//!   rather than carried).

use super::{strength_over, Detector, Signal};
use serde::{Deserialize, Serialize};

/// Features per reading.
pub const FEATURES: usize = 6;

/// Features are clamped to [-FEATURE_MAX, FEATURE_MAX].
pub const FEATURE_MAX: f32 = 8.0;

/// Largest supported depth: a tree has 2^(depth+1) nodes of 8 bytes (64 KiB at 12).
pub const DEPTH_MAX: u32 = 12;

/// Largest supported number of trees (with the largest depth, 4 MiB of nodes).
pub const TREES_MAX: u32 = 64;

/// Largest supported window (the leaves kept per window cost 2 bytes per tree and point).
pub const WINDOW_MAX: u32 = 4_096;

/// Smallest supported window (the size limit is a tenth of it).
pub const WINDOW_MIN: u32 = 10;

/// Parameters of the model.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Trees, 1 to [`TREES_MAX`]: more average out the randomness of the splits.
    pub trees: u32,
    /// Levels below the root, 1 to [`DEPTH_MAX`]: more resolve finer regions, at twice the
    /// memory per level.
    pub depth: u32,
    /// Points per window, [`WINDOW_MIN`] to [`WINDOW_MAX`]: the reference is the previous
    /// window.
    pub window: u32,
    /// Seed of the random splits.
    pub seed: u64,
    /// The score from which the model fires, in [0, 1] (clamped; NaN is 1).
    pub score_min: f32,
    /// Complete windows before the model may fire (at least 1: before that there is no
    /// reference).
    pub warm_windows: u32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            // 16 trees of depth 8 keep a check near 0.2 µs (shards/tests/fraud_cost.rs);
            // the paper's 25 trees cost about 0.4 µs for a slightly smoother score.
            trees: 16,
            depth: 8,
            window: 256,
            seed: 0x6873_7472_6565_7321,
            // Ten times rarer than a typical reference point: standard normal features
            // reach at most about 0.78 in 20 000 points.
            score_min: 0.9,
            warm_windows: 2,
        }
    }
}

/// A value of the random split generator (xorshift64*), in [0, 1) or [0, n).
struct Random(u64);

impl Random {
    fn new(seed: u64) -> Random {
        // xorshift has one fixed point: zero.
        Random(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn uniform(&mut self) -> f32 {
        // 24 bits: exactly representable in an f32.
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    fn below(&mut self, n: usize) -> usize {
        // n is FEATURES: the modulo bias, about n / 2^64, is nothing.
        (self.next_u64() % n as u64) as usize
    }
}

/// One node: its reference count and, for an internal node, its split (points with
/// `x[feature] >= at` go right). Eight bytes, so a visit is one load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Node {
    at: f32,
    r: u16,
    feature: u8,
}

/// Half-space trees: the model's state, checkpointable with serde.
///
/// Layout: tree `t`'s nodes are `nodes[t << (depth + 1)..]` in 1-based heap order (the
/// root at 1, the children of `i` at `2i` and `2i + 1`, the leaves from `2^depth`; slot 0
/// unused), so a walk's next index is one add and needs no per-tree base.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "HalfSpaceTreesState")]
pub struct HalfSpaceTrees {
    /// The shape and thresholds, clamped from the [`ModelConfig`] (kept with the state so a
    /// checkpoint is self-describing).
    trees: u32,
    depth: u32,
    window: u32,
    score_min: f32,
    warm_windows: u32,
    /// Every tree's nodes (the layout above); `r` is the reference window's count.
    nodes: Vec<Node>,
    /// The internal nodes' splits again, per tree `2^depth` slots in the same heap order
    /// (slot 0 unused; a power of two of slots in all): the split points and the
    /// features, apart. What a walk reads, in 5 of the 8 bytes a node takes and without
    /// the leaves, so more of it stays in the nearest cache. Fixed at construction (only
    /// the counts change): derived from `nodes` by [`HalfSpaceTrees::new`] and on restore.
    #[serde(skip)]
    split_at: Vec<f32>,
    #[serde(skip)]
    split_feature: Vec<u8>,
    /// Per tree and leaf, the mass of a point that reaches that leaf: `r · 2^k` at the
    /// first node of the leaf's path under the size limit, or at the leaf (each leaf has
    /// one path from the root, so its terminal node is known from the counts alone).
    /// Recomputed from `nodes` at each swap and on restore, so a walk reads no count: it
    /// only follows the splits down and looks its leaf up here.
    #[serde(skip)]
    leaf_mass: Vec<u32>,
    /// The latest window so far: per point (row) and tree, the leaf it reached (0 to
    /// 2^depth - 1). The paper counts the latest window in every node of the path; a
    /// node's count is the number of leaves under it that were reached, so keeping the
    /// leaves and summing at the swap is the same model at a fraction of the per-reading
    /// work (no store per visited node).
    leaves: Vec<u16>,
    /// Points in the window being filled (rows of `leaves` in use).
    filled: u32,
    /// Complete windows so far (saturating).
    windows: u32,
    /// The mass a reference point gets on average over the trees; 0 before the first
    /// complete window. Not serialised: it is recomputed from the counts on restore, so a
    /// checkpoint format that rounds floats cannot change a score.
    #[serde(skip)]
    typical_mass: f64,
}

/// The serialised form, checked before it becomes a model (a checkpoint is input).
#[derive(Deserialize)]
struct HalfSpaceTreesState {
    trees: u32,
    depth: u32,
    window: u32,
    score_min: f32,
    warm_windows: u32,
    nodes: Vec<Node>,
    leaves: Vec<u16>,
    filled: u32,
    windows: u32,
}

impl TryFrom<HalfSpaceTreesState> for HalfSpaceTrees {
    type Error = String;

    fn try_from(s: HalfSpaceTreesState) -> Result<Self, Self::Error> {
        if !(1..=TREES_MAX).contains(&s.trees)
            || !(1..=DEPTH_MAX).contains(&s.depth)
            || !(WINDOW_MIN..=WINDOW_MAX).contains(&s.window)
        {
            return Err(format!(
                "model shape out of range: {} trees, depth {}, window {}",
                s.trees, s.depth, s.window
            ));
        }
        let (trees, window) = (s.trees as usize, s.window as usize);
        let leaves_per_tree = 1usize << s.depth;
        let consistent = s.nodes.len() == trees << (s.depth + 1)
            && s.leaves.len() == window * trees
            && s.leaves.iter().all(|l| usize::from(*l) < leaves_per_tree)
            && s.nodes
                .iter()
                .all(|n| usize::from(n.feature) < FEATURES && n.at.is_finite())
            && s.filled < s.window
            && (0.0..=1.0).contains(&s.score_min)
            && s.warm_windows >= 1;
        if !consistent {
            return Err("model checkpoint inconsistent with its shape".to_string());
        }
        let mut model = HalfSpaceTrees {
            trees: s.trees,
            depth: s.depth,
            window: s.window,
            score_min: s.score_min,
            warm_windows: s.warm_windows,
            nodes: s.nodes,
            leaves: s.leaves,
            filled: s.filled,
            windows: s.windows,
            split_at: Vec::new(),
            split_feature: Vec::new(),
            leaf_mass: Vec::new(),
            typical_mass: 0.0,
        };
        (model.split_at, model.split_feature) = splits_of(&model.nodes, model.depth);
        model.leaf_mass = vec![0; (model.trees as usize) << model.depth];
        model.derive();
        Ok(model)
    }
}

/// `score_min` within [0, 1]; NaN is 1 (fires only where no tree has reference mass).
fn score_min_in_range(score_min: f32) -> f32 {
    if score_min.is_nan() {
        1.0
    } else {
        score_min.clamp(0.0, 1.0)
    }
}

/// A feature clamped into the work space; NaN is the top edge.
fn clamp_feature(x: f32) -> f32 {
    if x.is_nan() {
        FEATURE_MAX
    } else {
        x.clamp(-FEATURE_MAX, FEATURE_MAX)
    }
}

/// Places the splits under node `i` of one tree (1-based heap order): each at a uniform
/// point of the middle part of its node's range of its feature (leaving `SPLIT_PADDING` of
/// the range on each side), the ranges narrowing on the way down. Drawn depth first, left
/// before right, so the same seed places the same splits.
fn place_splits(
    tree: &mut [Node],
    i: usize,
    internal_end: usize,
    ranges: &mut [[f32; 2]; FEATURES],
    random: &mut Random,
) {
    if i >= internal_end {
        return;
    }
    let Some(node) = tree.get_mut(i) else {
        return;
    };
    let q = usize::from(node.feature).min(FEATURES - 1);
    let [lo, hi] = ranges[q];
    let width = hi - lo;
    let at = lo + width * (SPLIT_PADDING + (1.0 - 2.0 * SPLIT_PADDING) * random.uniform());
    node.at = at;
    ranges[q] = [lo, at];
    place_splits(tree, 2 * i, internal_end, ranges, random);
    ranges[q] = [at, hi];
    place_splits(tree, 2 * i + 1, internal_end, ranges, random);
    ranges[q] = [lo, hi];
}

/// The internal nodes' split points and features, per tree `2^depth` slots in heap order
/// (slot 0 unused), from the nodes laid out per tree in `2^(depth+1)` slots; padded with
/// empty trees to a power of two of slots (the walk masks its indices with the length).
fn splits_of(nodes: &[Node], depth: u32) -> (Vec<f32>, Vec<u8>) {
    let (stride, internal) = (1usize << (depth + 1), 1usize << depth);
    let trees = nodes.len() / stride;
    let len = (trees.max(1) << depth).next_power_of_two();
    let splits = nodes
        .chunks_exact(stride)
        .flat_map(|tree| &tree[..internal]);
    let mut at: Vec<f32> = splits.clone().map(|node| node.at).collect();
    let mut feature: Vec<u8> = splits.map(|node| node.feature).collect();
    at.resize(len, 0.0);
    feature.resize(len, 0);
    (at, feature)
}

/// The share of a node's range on each side where no split is placed (River's value), so
/// no split leaves a sliver.
const SPLIT_PADDING: f32 = 0.15;

/// Trees walked side by side: eight independent descents overlap in the pipeline instead
/// of each waiting on its own chain of loads.
const LANES: usize = 8;

impl HalfSpaceTrees {
    /// A model with no window yet. Out-of-range shape parameters are clamped to the
    /// supported ranges (trees 1..=[`TREES_MAX`], depth 1..=[`DEPTH_MAX`], window
    /// [`WINDOW_MIN`]..=[`WINDOW_MAX`], warm windows at least 1), so this never fails; a
    /// server validates its config first.
    #[must_use]
    pub fn new(config: &ModelConfig) -> HalfSpaceTrees {
        let trees = config.trees.clamp(1, TREES_MAX);
        let depth = config.depth.clamp(1, DEPTH_MAX);
        let window = config.window.clamp(WINDOW_MIN, WINDOW_MAX);
        let (stride, internal_end) = (1usize << (depth + 1), 1usize << depth);
        let mut random = Random::new(config.seed);
        let mut nodes = vec![Node::default(); trees as usize * stride];
        for tree in nodes.chunks_exact_mut(stride) {
            for node in tree.iter_mut().take(internal_end).skip(1) {
                // FEATURES is far below 256.
                node.feature = random.below(FEATURES) as u8;
            }
            let mut ranges = [[-FEATURE_MAX, FEATURE_MAX]; FEATURES];
            place_splits(tree, 1, internal_end, &mut ranges, &mut random);
        }
        let (split_at, split_feature) = splits_of(&nodes, depth);
        HalfSpaceTrees {
            trees,
            depth,
            window,
            score_min: score_min_in_range(config.score_min),
            warm_windows: config.warm_windows.max(1),
            nodes,
            leaves: vec![0; window as usize * trees as usize],
            filled: 0,
            windows: 0,
            split_at,
            split_feature,
            leaf_mass: vec![0; (trees as usize) << depth],
            typical_mass: 0.0,
        }
    }

    /// Whether this model has the shape `config` asks for (a restored checkpoint learned
    /// under another configuration is not used).
    #[must_use]
    pub fn matches(&self, config: &ModelConfig) -> bool {
        (self.trees, self.depth, self.window, self.warm_windows)
            == (
                config.trees,
                config.depth,
                config.window,
                config.warm_windows,
            )
            && self.score_min.to_bits() == config.score_min.to_bits()
    }

    /// Whether enough windows have completed for the model to fire.
    #[must_use]
    pub fn is_warm(&self) -> bool {
        self.windows >= self.warm_windows
    }

    /// Complete windows so far.
    #[must_use]
    pub fn windows(&self) -> u32 {
        self.windows
    }

    /// Bytes of state (the vectors), for the memory budget.
    #[must_use]
    pub fn state_bytes(&self) -> usize {
        self.nodes.len() * std::mem::size_of::<Node>()
            + self.leaves.len() * std::mem::size_of::<u16>()
            + self.leaf_mass.len() * std::mem::size_of::<u32>()
            + self.split_at.len() * std::mem::size_of::<f32>()
            + self.split_feature.len()
    }

    /// The anomaly score of a point, in [0, 1] (module docs); 0 before the first complete
    /// window. Learns nothing.
    #[must_use]
    pub fn score(&self, features: &[f32; FEATURES]) -> f32 {
        let mass = self.walk(features, None);
        self.normalise(mass)
    }

    /// Counts a point in the latest window (swapping windows when it is full).
    pub fn update(&mut self, features: &[f32; FEATURES]) {
        self.learn(features);
    }

    /// Scores a point, then learns it (one walk for both): a [`Detector::Model`] signal
    /// when warm and the score is at least `score_min`.
    pub fn check(&mut self, features: &[f32; FEATURES]) -> Option<Signal> {
        // Warm as of the reference the point is compared with, before learning it (which
        // may complete a window).
        let warm = self.is_warm();
        let score = self.learn(features);
        (warm && score >= self.score_min).then(|| Signal {
            detector: Detector::Model,
            strength: self.strength(score),
        })
    }

    /// Scores and learns a point; the score is the one [`HalfSpaceTrees::score`] gave
    /// before.
    fn learn(&mut self, features: &[f32; FEATURES]) -> f32 {
        let trees = self.trees as usize;
        let row = self.filled as usize * trees;
        let mut leaves = std::mem::take(&mut self.leaves);
        let mass = self.walk(features, leaves.get_mut(row..row + trees));
        self.leaves = leaves;
        let score = self.normalise(mass);
        self.filled += 1;
        if self.filled >= self.window {
            self.swap_windows();
        }
        score
    }

    /// The sum over the trees of the point's mass, `r · 2^k` at its terminal node (the first
    /// on its path under the size limit, or the leaf); the leaf reached in each tree goes
    /// to `leaves` when given.
    fn walk(&self, features: &[f32; FEATURES], mut leaves: Option<&mut [u16]>) -> f64 {
        // Padded to 8 so a feature index is masked, not bounds-checked.
        let mut x = [0.0f32; 8];
        for (x, f) in x.iter_mut().zip(features) {
            *x = clamp_feature(*f);
        }
        let trees = self.trees as usize;
        let side_by_side = trees / LANES * LANES;
        let mut mass = 0u64;
        for first in (0..side_by_side).step_by(LANES) {
            mass += self.walk_lanes::<LANES>(first, &x, leaves.as_deref_mut());
        }
        for first in side_by_side..trees {
            mass += self.walk_lanes::<1>(first, &x, leaves.as_deref_mut());
        }
        // An exact integer sum: r <= 2^12, 2^depth <= 2^12, trees <= 64.
        mass as f64
    }

    /// [`HalfSpaceTrees::walk`] over trees `first..first + L`, branch-free: each lane
    /// follows its tree's splits to a leaf (which side is data, a select, not a jump to
    /// mispredict), then the leaf's mass is looked up.
    #[inline(always)]
    fn walk_lanes<const L: usize>(
        &self,
        first: usize,
        x: &[f32; 8],
        leaves: Option<&mut [u16]>,
    ) -> u64 {
        let depth = self.depth;
        let leaf_first = 1usize << depth;
        // Each lane's index into the splits: its tree's base plus its 1-based heap index,
        // so the child of `at` is `at + (at & (leaf_first - 1)) + side` until the last
        // level, where `at` leaves the tree's splits: then `at - base - leaf_first` is the
        // leaf's number. Always in bounds (`new` sized the splits for every tree):
        // indexing asserts it.
        let base: [usize; L] = std::array::from_fn(|l| (first + l) << depth);
        let mut at: [usize; L] = std::array::from_fn(|l| base[l] + 1);
        // The splits' length is a power of two (`splits_of`), so masking an index with it
        // changes no index in range and lets the compiler drop the bounds checks.
        let (split_at, split_feature) = (&self.split_at[..], &self.split_feature[..]);
        if split_at.is_empty() || split_feature.len() != split_at.len() {
            return 0;
        }
        let mask = split_at.len() - 1;
        for _ in 0..depth {
            for l in 0..L {
                let i = at[l] & mask;
                let feature = usize::from(split_feature[i]) & 7;
                let side = usize::from(x[feature] >= split_at[i]);
                at[l] += (at[l] - base[l]) + side;
            }
        }
        let mut total = 0;
        for (l, at) in at.iter_mut().enumerate() {
            // The leaf's number in its tree.
            *at -= base[l] + leaf_first;
            total += u64::from(self.leaf_mass[base[l] + *at]);
        }
        if let Some(slots) = leaves.and_then(|leaves| leaves.get_mut(first..first + L)) {
            for (slot, leaf) in slots.iter_mut().zip(at) {
                *slot = u16::try_from(leaf).unwrap_or(0);
            }
        }
        total
    }

    /// The paper's size limit: a node with fewer reference points than a tenth of the
    /// window is too thin to go deeper.
    fn size_limit(&self) -> u16 {
        u16::try_from((self.window / 10).max(1)).unwrap_or(u16::MAX)
    }

    fn normalise(&self, mass_sum: f64) -> f32 {
        if self.typical_mass <= 0.0 {
            return 0.0;
        }
        let mass = mass_sum / f64::from(self.trees);
        (1.0 - mass / self.typical_mass).clamp(0.0, 1.0) as f32
    }

    fn strength(&self, score: f32) -> f32 {
        if score >= 1.0 {
            return 1.0;
        }
        let rarity = 1.0 / (1.0 - f64::from(score));
        let limit = 1.0 / (1.0 - f64::from(self.score_min));
        strength_over(rarity, limit)
    }

    /// The latest window becomes the reference: each leaf's count is the number of points
    /// that reached it, each internal node's the sum of its children's. Then the typical
    /// mass, once per window.
    fn swap_windows(&mut self) {
        let trees = self.trees as usize;
        let (stride, leaf_first) = (1usize << (self.depth + 1), 1usize << self.depth);
        for tree in self.nodes.chunks_exact_mut(stride) {
            for leaf in tree.iter_mut().skip(leaf_first) {
                leaf.r = 0;
            }
        }
        for row in self.leaves.chunks_exact(trees) {
            for (tree, leaf) in row.iter().enumerate() {
                let i = tree * stride + leaf_first + usize::from(*leaf);
                if let Some(node) = self.nodes.get_mut(i) {
                    node.r = node.r.saturating_add(1);
                }
            }
        }
        for tree in self.nodes.chunks_exact_mut(stride) {
            // Level by level up from the leaves' parents: the children of the nodes
            // [half, 2 half) are the pairs of [2 half, 4 half).
            let mut half = leaf_first / 2;
            while half >= 1 {
                let (parents, children) = tree.split_at_mut(2 * half);
                for (parent, pair) in parents[half..].iter_mut().zip(children.chunks_exact(2)) {
                    parent.r = pair[0].r.saturating_add(pair[1].r);
                }
                half /= 2;
            }
        }
        self.filled = 0;
        self.windows = self.windows.saturating_add(1);
        self.derive();
    }

    /// What follows from the counts: each leaf's mass, and the mass a point of the
    /// reference window gets on average (per tree, the sum over the terminal nodes of (share
    /// of the reference there) · (their mass), averaged over the trees). One depth-first
    /// walk per tree visits only the nodes points can reach: it stops at a node under the
    /// size limit or at a leaf, whose mass every leaf under it takes.
    fn derive(&mut self) {
        let depth = self.depth;
        let (stride, leaf_first) = (1usize << (depth + 1), 1usize << depth);
        let size_limit = self.size_limit();
        let points = f64::from(self.window);
        let mut total = 0.0;
        for (tree, masses) in self
            .nodes
            .chunks_exact(stride)
            .zip(self.leaf_mass.chunks_exact_mut(leaf_first))
        {
            // Depth first, both children pushed: at most one pending node per level.
            let mut pending = [0usize; DEPTH_MAX as usize + 2];
            pending[0] = 1;
            let mut len = 1;
            while len > 0 {
                len -= 1;
                let i = pending[len];
                let r = tree.get(i).map_or(0, |node| node.r);
                if r < size_limit || i >= leaf_first {
                    let level = usize::BITS - 1 - i.leading_zeros();
                    // The leaves under node i: its heap index shifted down to the leaves.
                    let below = depth - level;
                    let leaves = (i << below) - leaf_first..((i + 1) << below) - leaf_first;
                    if let Some(masses) = masses.get_mut(leaves) {
                        masses.fill(u32::from(r) << level);
                    }
                    let r = f64::from(r);
                    total += r / points * r * f64::from(1u32 << level);
                } else if len + 2 <= pending.len() {
                    pending[len] = 2 * i + 1;
                    pending[len + 1] = 2 * i;
                    len += 2;
                }
            }
        }
        self.typical_mass = total / f64::from(self.trees);
    }
}

#[cfg(test)]
mod tests;
