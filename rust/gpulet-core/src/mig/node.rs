//! Planning across the GPUs of a node.
//!
//! Requests are counted per profile name ("lane"); a multiset of requests packs into a `u128`
//! with 8 bits per lane (16 lanes, at most 127 requests of one profile), so "does this GPU's
//! option fit in what is left" and "what is left after it" are one SWAR compare and one
//! subtraction.

use super::layout::Layout;
use super::model::{model, FxMap, MigModel, State};
use super::plan::summarize;
use crate::error::{CoreError, Result};

/// One GPU of a node: its model and the instances it already has.
#[derive(Clone, Copy, Debug)]
pub struct NodeGpu<'a> {
    pub model: &'a str,
    pub existing: Option<&'a Layout>,
}

impl<'a> NodeGpu<'a> {
    pub fn new(model: &'a str, existing: Option<&'a Layout>) -> Self {
        NodeGpu { model, existing }
    }
}

const LANES: usize = 16;
const MAX_GPUS: usize = 64;
const LANE_MAX: u32 = 127;
const HIGH: u128 = 0x8080_8080_8080_8080_8080_8080_8080_8080;
const INF: u64 = u64::MAX;

#[inline]
fn fits(rem: u128, take: u128) -> bool {
    ((rem | HIGH) - take) & HIGH == HIGH
}

#[inline]
fn lane(v: u128, l: usize) -> u32 {
    ((v >> (8 * l)) & 0xff) as u32
}

struct Gpu {
    model: &'static MigModel,
    state: State,
    slots: Vec<usize>,
    /// Index into the shared option tables (GPUs with equal model and state share one).
    table: usize,
}

/// Something one GPU can take: a sub-multiset of the requests with its best placement.
struct Opt {
    take: u128,
    /// Stranded capacity of the GPU afterwards, scaled to the node's common denominator.
    cost: u64,
    compute: u32,
    added: Vec<usize>,
}

fn resolve(gpus: &[NodeGpu<'_>]) -> Result<Vec<Gpu>> {
    if gpus.is_empty() || gpus.len() > MAX_GPUS {
        return Err(CoreError::InvalidArgument(format!(
            "a node plan takes 1 to {MAX_GPUS} GPUs (one model per GPU); got {}",
            gpus.len()
        )));
    }
    gpus.iter()
        .enumerate()
        .map(|(i, g)| {
            let m = model(g.model)?;
            let (state, slots) = m.existing_state(g.existing).map_err(|e| match e {
                CoreError::MigLayout(msg) => CoreError::MigLayout(format!("GPU {i}: {msg}")),
                other => other,
            })?;
            Ok(Gpu {
                model: m,
                state,
                slots,
                table: 0,
            })
        })
        .collect()
}

/// The NVML name each request means on the node (the first GPU model that knows it).
fn canonical<S: AsRef<str>>(gpus: &[Gpu], requests: &[S]) -> Result<Vec<&'static str>> {
    requests
        .iter()
        .map(|r| {
            let r = r.as_ref();
            gpus.iter()
                .find_map(|g| g.model.find_profile(r).map(|p| g.model.profiles()[p].name))
                .ok_or_else(|| {
                    let mut seen: Vec<&str> = Vec::new();
                    let mut known = Vec::new();
                    for g in gpus {
                        if !seen.contains(&g.model.key()) {
                            seen.push(g.model.key());
                            let names: Vec<&str> =
                                g.model.profiles().iter().map(|p| p.name).collect();
                            known.push(format!("{}: {}", g.model.key(), names.join(", ")));
                        }
                    }
                    CoreError::MigLayout(format!(
                        "unknown MIG profile {r:?} for this node's GPUs; their profiles are {}",
                        known.join("; ")
                    ))
                })
        })
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn describe_gpus(gpus: &[Gpu]) -> String {
    gpus.iter()
        .enumerate()
        .map(|(i, g)| {
            format!(
                "GPU {i} ({}): {}",
                g.model.key(),
                g.model.describe_free(g.state)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The search runs over GPU positions, most constrained GPU (fewest options) first: deciding
/// those first keeps the set of distinct "requests still unplaced" small (about ten times
/// fewer memo entries than index order on busy nodes). All per-position vectors have one more
/// entry than there are GPUs (the empty suffix).
struct Dp<'a> {
    tables: &'a [Vec<Opt>],
    /// Per position: its option table.
    table: Vec<usize>,
    /// Per position: stranded cost when it takes nothing, summed from that GPU to the last.
    idle_cost: Vec<u64>,
    /// Per GPU: the least cost any of its options has, summed from that GPU to the last (a
    /// lower bound on what GPUs k.. can cost).
    least_cost: Vec<u64>,
    /// Per GPU k: free compute slices, memory slices and instance room of GPUs k.., and per
    /// lane the most instances GPUs k.. can take.
    free_compute: Vec<u32>,
    free_memory: Vec<u32>,
    free_instances: Vec<u32>,
    lane_room: Vec<[u32; LANES]>,
    /// Per lane, the fewest and most compute and memory slices one instance takes on any GPU.
    lane_compute: [(u32, u32); LANES],
    lane_memory: [(u32, u32); LANES],
    lanes: usize,
    /// The largest compute-per-memory-slice ratio `rho = p / q` of any profile on the node
    /// (an instance set in `F` free memory slices takes at most `rho * F` compute slices), and
    /// the largest memory-per-compute ratio `sigma`.
    rho: (i64, i64),
    sigma: (i64, i64),
    /// The least cost of one stranded memory slice and of one stranded compute slice on any
    /// GPU (scaled like `Opt::cost`).
    memory_weight: u64,
    compute_weight: u64,
    memo: FxMap<(u8, u128), Entry>,
}

impl Dp<'_> {
    /// A lower bound on the cost of GPUs k.. once they hold requests taking `compute` and
    /// `memory` slices (each as (least, most)). Left free afterwards: `K` compute and `F` memory
    /// slices in all; per GPU, further instances take at most `rho * F_j` compute and `sigma *
    /// K_j` memory slices, so at least `K - rho F` compute and `F - sigma K` memory slices are
    /// stranded in all.
    fn lower_bound(&self, k: usize, compute: (u32, u32), memory: (u32, u32)) -> u64 {
        let (fc, fm) = (
            i64::from(self.free_compute[k]),
            i64::from(self.free_memory[k]),
        );
        let (k_lo, k_hi) = (fc - i64::from(compute.1), fc - i64::from(compute.0));
        let (f_lo, f_hi) = (fm - i64::from(memory.1), fm - i64::from(memory.0));
        let ceil_div = |a: i64, b: i64| if a <= 0 { 0 } else { ((a + b - 1) / b) as u64 };
        let sc = ceil_div(k_lo * self.rho.1 - f_hi * self.rho.0, self.rho.1);
        let sm = ceil_div(f_lo * self.sigma.1 - k_hi * self.sigma.0, self.sigma.1);
        (sc * self.compute_weight + sm * self.memory_weight).max(self.least_cost[k])
    }

    /// The least cost of placing `rem` on GPUs k.., if it is below `budget`; otherwise some
    /// lower bound that is at least `budget` (branch and bound). Memoised: an entry is either
    /// exact (with the option chosen) or a lower bound from a search cut off by its budget.
    fn solve(&mut self, k: usize, rem: u128, budget: u64) -> u64 {
        if rem == 0 {
            return self.idle_cost[k];
        }
        if k == self.table.len() {
            return INF;
        }
        let key = (k as u8, rem);
        let mut lower = 0;
        if let Some(e) = self.memo.get(&key) {
            if e.exact || e.cost >= budget {
                return e.cost;
            }
            lower = e.cost;
        } else {
            let (mut c_lo, mut c_hi, mut m_lo, mut m_hi, mut count) = (0, 0, 0, 0, 0);
            let mut possible = true;
            for l in 0..self.lanes {
                let n = lane(rem, l);
                c_lo += n * self.lane_compute[l].0;
                c_hi += n * self.lane_compute[l].1;
                m_lo += n * self.lane_memory[l].0;
                m_hi += n * self.lane_memory[l].1;
                count += n;
                possible &= n <= self.lane_room[k][l];
            }
            if !possible
                || c_lo > self.free_compute[k]
                || m_lo > self.free_memory[k]
                || count > self.free_instances[k]
            {
                self.memo.insert(
                    key,
                    Entry {
                        cost: INF,
                        exact: true,
                        choice: u32::MAX,
                    },
                );
                return INF;
            }
            lower = lower.max(self.lower_bound(k, (c_lo, c_hi), (m_lo, m_hi)));
        }
        if lower >= budget {
            self.memo.insert(
                key,
                Entry {
                    cost: lower,
                    exact: false,
                    choice: u32::MAX,
                },
            );
            return lower;
        }
        let table = self.table[k];
        let mut bound = budget;
        let mut choice = None;
        let mut floor = INF;
        for i in 0..self.tables[table].len() {
            let opt = &self.tables[table][i];
            // Options are sorted by cost: once one cannot beat the bound, none after it can.
            if opt.cost.saturating_add(self.least_cost[k + 1]) >= bound {
                floor = floor.min(opt.cost.saturating_add(self.least_cost[k + 1]));
                break;
            }
            if !fits(rem, opt.take) {
                continue;
            }
            let (take, cost) = (opt.take, opt.cost);
            let rest = self.solve(k + 1, rem - take, bound - cost);
            let total = cost.saturating_add(rest);
            if total < bound {
                bound = total;
                choice = Some(i as u32);
                if bound <= lower {
                    break;
                }
            } else {
                floor = floor.min(total);
            }
        }
        let entry = match choice {
            Some(i) => Entry {
                cost: bound,
                exact: true,
                choice: i,
            },
            // Nothing beat the budget: every option costs at least `floor` (INF: none fits).
            None if floor == INF => Entry {
                cost: INF,
                exact: true,
                choice: u32::MAX,
            },
            None => Entry {
                cost: floor.max(budget).max(lower),
                exact: false,
                choice: u32::MAX,
            },
        };
        self.memo.insert(key, entry);
        entry.cost
    }
}

#[derive(Clone, Copy)]
struct Entry {
    cost: u64,
    exact: bool,
    choice: u32,
}

/// Assign `requests` (profile names, repeats allowed) to the GPUs of a node, keeping each GPU's
/// existing instances; returns one whole layout per GPU, in the given order. Exact: it fails
/// only when no assignment exists, and otherwise returns one with the least total stranded
/// capacity (see [`crate::mig`]).
pub fn plan_node<S: AsRef<str>>(gpus: &[NodeGpu<'_>], requests: &[S]) -> Result<Vec<Layout>> {
    let mut gpus = resolve(gpus)?;
    let names = canonical(&gpus, requests)?;
    let mut lane_names: Vec<&'static str> = Vec::new();
    let mut counts = [0u32; LANES];
    for n in &names {
        let l = match lane_names.iter().position(|x| x == n) {
            Some(l) => l,
            None if lane_names.len() < LANES => {
                lane_names.push(n);
                lane_names.len() - 1
            }
            None => {
                return Err(CoreError::InvalidArgument(format!(
                    "at most {LANES} distinct MIG profiles per node plan; got more ({})",
                    summarize(&names)
                )))
            }
        };
        counts[l] += 1;
    }
    let lanes = lane_names.len();
    // Per GPU and lane: the profile index in that GPU's model.
    let lane_prof: Vec<Vec<Option<usize>>> = gpus
        .iter()
        .map(|g| lane_names.iter().map(|n| g.model.find_profile(n)).collect())
        .collect();
    for l in 0..lanes {
        if counts[l] > LANE_MAX {
            let cap: u32 = gpus
                .iter()
                .zip(&lane_prof)
                .filter_map(|(g, lp)| lp[l].map(|p| g.model.profiles()[p].max_instances))
                .sum();
            return Err(if counts[l] > cap {
                CoreError::Infeasible(format!(
                    "{} instances of {} requested; the node's {} GPUs hold at most {cap}",
                    counts[l],
                    lane_names[l],
                    gpus.len()
                ))
            } else {
                CoreError::InvalidArgument(format!(
                    "at most {LANE_MAX} requests of one MIG profile per node plan; got {} of {}",
                    counts[l], lane_names[l]
                ))
            });
        }
    }
    let mut full: u128 = 0;
    for (l, &n) in counts.iter().enumerate().take(lanes) {
        full |= u128::from(n) << (8 * l);
    }

    // A common denominator for the GPUs' stranded-capacity costs.
    let mut den: u64 = 1;
    for g in &gpus {
        let d = u64::from(g.model.cost_den());
        den = den / gcd(den, d) * d;
    }

    // Options per distinct (model, state, lane mapping).
    let mut keys: Vec<(usize, State)> = Vec::new();
    let mut tables: Vec<Vec<Opt>> = Vec::new();
    for (gi, g) in gpus.iter_mut().enumerate() {
        let m = g.model;
        let key = (m as *const MigModel as usize, g.state);
        if let Some(t) = keys.iter().position(|k| *k == key) {
            g.table = t;
            continue;
        }
        let scale = den / u64::from(m.cost_den());
        let mut prof_lane = vec![None; m.profs.len()];
        for (l, p) in lane_prof[gi].iter().enumerate() {
            if let Some(p) = *p {
                prof_lane[p] = Some(l);
            }
        }
        let mut opts: Vec<Opt> = Vec::new();
        'next: for a in m.additions(g.state).iter() {
            let mut take = 0u128;
            let mut rest = a.counts;
            while rest != 0 {
                let p = (rest.trailing_zeros() / 4) as usize;
                let n = (rest >> (4 * p)) & 0xf;
                rest &= !(0xf << (4 * p));
                match prof_lane[p] {
                    Some(l) if n as u32 <= counts[l] => take |= u128::from(n) << (8 * l),
                    _ => continue 'next,
                }
            }
            opts.push(Opt {
                take,
                cost: u64::from(a.cost) * scale,
                compute: u32::from(a.compute),
                added: a.added.iter().map(|&c| usize::from(c)).collect(),
            });
        }
        // Cheapest first (for the bound in `Dp::solve`), then more work on lower-index GPUs
        // among equal costs; stable, so discovery order decides the rest.
        opts.sort_by_key(|o| (o.cost, std::cmp::Reverse(o.compute)));
        g.table = tables.len();
        keys.push(key);
        tables.push(opts);
    }

    let n = gpus.len();
    // Positions: fewest options first; equal GPUs adjacent, lower index first.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (tables[gpus[i].table].len(), gpus[i].table, i));
    let mut dp = Dp {
        tables: &tables,
        table: order.iter().map(|&i| gpus[i].table).collect(),
        idle_cost: vec![0; n + 1],
        least_cost: vec![0; n + 1],
        free_compute: vec![0; n + 1],
        free_memory: vec![0; n + 1],
        free_instances: vec![0; n + 1],
        lane_room: vec![[0; LANES]; n + 1],
        lane_compute: [(u32::MAX, 0); LANES],
        lane_memory: [(u32::MAX, 0); LANES],
        lanes,
        rho: (0, 1),
        sigma: (0, 1),
        memory_weight: u64::MAX,
        compute_weight: u64::MAX,
        memo: FxMap::default(),
    };
    for k in (0..n).rev() {
        let g = &gpus[order[k]];
        let opts = &tables[g.table];
        let idle = opts.iter().find(|o| o.take == 0).map_or(0, |o| o.cost);
        dp.idle_cost[k] = dp.idle_cost[k + 1] + idle;
        dp.least_cost[k] = dp.least_cost[k + 1] + opts.first().map_or(0, |o| o.cost);
        dp.free_compute[k] = dp.free_compute[k + 1] + g.model.free_compute(g.state);
        dp.free_memory[k] = dp.free_memory[k + 1] + g.model.free_memory(g.state);
        dp.free_instances[k] = dp.free_instances[k + 1] + g.model.free_instances(g.state);
        let mut room = dp.lane_room[k + 1];
        for (l, r) in room.iter_mut().enumerate().take(lanes) {
            *r += opts.iter().map(|o| lane(o.take, l)).max().unwrap_or(0);
        }
        dp.lane_room[k] = room;
        for (l, p) in lane_prof[order[k]].iter().enumerate() {
            if let Some(p) = *p {
                let prof = &g.model.profs[p];
                let (c, m) = (u32::from(prof.compute), u32::from(prof.mem));
                let lc = &mut dp.lane_compute[l];
                *lc = (lc.0.min(c), lc.1.max(c));
                let lm = &mut dp.lane_memory[l];
                *lm = (lm.0.min(m), lm.1.max(m));
            }
        }
        for prof in &g.model.profs {
            let (c, m) = (i64::from(prof.compute), i64::from(prof.mem));
            if c * dp.rho.1 > dp.rho.0 * m {
                dp.rho = (c, m);
            }
            if m * dp.sigma.1 > dp.sigma.0 * c {
                dp.sigma = (m, c);
            }
        }
        let geo = g.model.geometry();
        let scale = den / u64::from(g.model.cost_den());
        dp.memory_weight = dp.memory_weight.min(scale * u64::from(geo.compute_slices));
        dp.compute_weight = dp.compute_weight.min(scale * u64::from(geo.memory_slices));
    }
    for l in 0..lanes {
        // A lane no GPU knows has no room at all; the room check rejects it.
        if dp.lane_compute[l].0 == u32::MAX {
            dp.lane_compute[l] = (0, 0);
            dp.lane_memory[l] = (0, 0);
        }
    }

    let total_cost = dp.solve(0, full, INF);
    if total_cost == INF {
        let (mut compute, mut count) = (0u32, 0u32);
        for (n, c) in counts.iter().zip(&dp.lane_compute).take(lanes) {
            compute += n * c.0;
            count += n;
        }
        let why = if compute > dp.free_compute[0] {
            format!(
                "they need {compute} compute slices and the GPUs have {} free",
                dp.free_compute[0]
            )
        } else if count > dp.free_instances[0] {
            format!(
                "they are {count} instances and the GPUs have room for {}",
                dp.free_instances[0]
            )
        } else {
            "no assignment of the requests to the GPUs fits".to_string()
        };
        return Err(CoreError::Infeasible(format!(
            "cannot place {} on the node's {n} GPU{}: {why}; {}",
            summarize(&names),
            if n == 1 { "" } else { "s" },
            describe_gpus(&gpus)
        )));
    }

    let mut out = vec![Layout::empty(); n];
    let mut rem = full;
    for (k, &gi) in order.iter().enumerate() {
        let g = &gpus[gi];
        let opts = &tables[g.table];
        let choice = if rem == 0 {
            opts.iter().position(|o| o.take == 0)
        } else {
            dp.memo.get(&(k as u8, rem)).map(|e| e.choice as usize)
        };
        let Some(opt) = choice.and_then(|i| opts.get(i)) else {
            return Err(CoreError::Infeasible(format!(
                "internal: no plan recorded for GPU {gi}"
            )));
        };
        rem -= opt.take;
        let mut all = g.slots.clone();
        all.extend_from_slice(&opt.added);
        out[gi] = g.model.layout_of(&all);
    }
    Ok(out)
}

/// The naive baseline across a node: each request in the given order on the lowest-index GPU
/// with a free placement, at its lowest free placement there.
pub fn first_fit_node<S: AsRef<str>>(gpus: &[NodeGpu<'_>], requests: &[S]) -> Result<Vec<Layout>> {
    let mut gpus = resolve(gpus)?;
    let names = canonical(&gpus, requests)?;
    for (i, name) in names.iter().enumerate() {
        let placed = gpus.iter_mut().any(|g| {
            let Some(p) = g.model.find_profile(name) else {
                return false;
            };
            let range = g.model.profs[p].cands.clone();
            for c in range {
                if let Some(next) = g.model.add(g.state, &g.model.cands[c]) {
                    g.state = next;
                    g.slots.push(c);
                    return true;
                }
            }
            false
        });
        if !placed {
            return Err(CoreError::Infeasible(format!(
                "first fit: {name} (request {} of {}) fits no GPU; {}",
                i + 1,
                names.len(),
                describe_gpus(&gpus)
            )));
        }
    }
    Ok(gpus.iter().map(|g| g.model.layout_of(&g.slots)).collect())
}
