//! Reading the machine's layout. hwloc is the source of truth; if it fails (a container without
//! /sys, say) the allowed CPU list from core_affinity stands in, each CPU its own core, with
//! the reason logged.

use hwlocality::object::types::ObjectType;
use hwlocality::object::TopologyObject;

/// One hardware thread this process may run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpu {
    pub os_index: usize,
    /// Logical index of its physical core (hyperthreads share it).
    pub core: usize,
    pub numa_node: Option<usize>,
    pub package: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Topology {
    pub cpus: Vec<Cpu>,
    pub cores: usize,
    pub numa_nodes: usize,
    pub packages: usize,
    pub l3_bytes: Option<u64>,
    pub source: &'static str,
}

impl Topology {
    pub fn summary(&self) -> String {
        format!(
            "{} package(s), {} NUMA node(s), {} core(s), {} CPU(s) available{} (from {})",
            self.packages,
            self.numa_nodes,
            self.cores,
            self.cpus.len(),
            self.l3_bytes
                .map(|b| format!(", L3 {} KiB", b / 1024))
                .unwrap_or_default(),
            self.source
        )
    }
}

fn allowed_cpus() -> Vec<usize> {
    core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_default()
}

pub fn discover() -> Topology {
    let allowed = allowed_cpus();
    match from_hwloc(&allowed) {
        Ok(t) if !t.cpus.is_empty() => t,
        Ok(_) => fallback(allowed, "hwloc found none of the allowed CPUs"),
        Err(e) => fallback(allowed, &e),
    }
}

fn fallback(allowed: Vec<usize>, why: &str) -> Topology {
    tracing::warn!("hwloc topology unavailable ({why}); treating each allowed CPU as its own core");
    let cpus: Vec<Cpu> = allowed
        .iter()
        .enumerate()
        .map(|(core, &os_index)| Cpu {
            os_index,
            core,
            numa_node: None,
            package: None,
        })
        .collect();
    Topology {
        cores: cpus.len(),
        cpus,
        numa_nodes: 0,
        packages: 0,
        l3_bytes: None,
        source: "sched_getaffinity",
    }
}

fn ancestor_index(pu: &TopologyObject, ty: ObjectType) -> Option<usize> {
    pu.ancestors()
        .find(|a| a.object_type() == ty)
        .map(|a| a.logical_index())
}

fn from_hwloc(allowed: &[usize]) -> Result<Topology, String> {
    let topo = hwlocality::Topology::new().map_err(|e| e.to_string())?;
    let nodes: Vec<&TopologyObject> = topo.objects_with_type(ObjectType::NUMANode).collect();
    let mut cpus = Vec::new();
    for pu in topo.objects_with_type(ObjectType::PU) {
        let Some(os_index) = pu.os_index() else {
            continue;
        };
        if !allowed.is_empty() && !allowed.contains(&os_index) {
            continue;
        }
        let numa_node = nodes
            .iter()
            .find(|n| n.cpuset().is_some_and(|set| set.is_set(os_index)))
            .and_then(|n| n.os_index());
        cpus.push(Cpu {
            os_index,
            core: ancestor_index(pu, ObjectType::Core).unwrap_or(os_index),
            numa_node,
            package: ancestor_index(pu, ObjectType::Package),
        });
    }
    let mut cores: Vec<usize> = cpus.iter().map(|c| c.core).collect();
    cores.sort_unstable();
    cores.dedup();
    let l3_bytes = topo
        .objects_with_type(ObjectType::L3Cache)
        .next()
        .and_then(|o| match o.attributes() {
            Some(hwlocality::object::attributes::ObjectAttributes::Cache(c)) => {
                c.size().map(|s| s.get())
            }
            _ => None,
        });
    Ok(Topology {
        cores: cores.len(),
        numa_nodes: nodes.len(),
        packages: topo.objects_with_type(ObjectType::Package).count(),
        cpus,
        l3_bytes,
        source: "hwloc",
    })
}
