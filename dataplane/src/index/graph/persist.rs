//! A graph written to a stream and read back: its shape (levels, entry point), every node's
//! layer-0 block (list and vector) and upper-layer lists. Labels are not written: whoever
//! keeps the file records what each node stands for, and a graph read back labels node `i`
//! with `i`.
//!
//! ```text
//!   u32 m | u32 dimension | u64 nodes | u64 entry (node | level << 32)
//!   nodes x u8 level
//!   nodes x (list words + code words) u32     layer-0 block, padding left out
//!   for each node with level > 0: level x (m + 1) u32
//! ```
//!
//! Everything is little-endian. Reading checks every count, level and neighbour id against
//! the graph being built, so a damaged stream is refused with an error, never turned into a
//! graph whose walks could leave it.

use super::{EMPTY, GraphParams, HnswGraph, MAX_LEVEL, Node};
use crate::index::quantize::Space;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU32, Ordering as Mem};

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn write_words(
    out: &mut dyn Write,
    words: impl Iterator<Item = u32>,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    buf.clear();
    for word in words {
        buf.extend_from_slice(&word.to_le_bytes());
    }
    out.write_all(buf)
}

fn read_words(input: &mut dyn Read, count: usize, buf: &mut Vec<u8>) -> io::Result<Vec<u32>> {
    buf.resize(count * 4, 0);
    input.read_exact(buf)?;
    Ok(buf
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect())
}

fn read_u64(input: &mut dyn Read) -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    input.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

fn read_u32(input: &mut dyn Read) -> io::Result<u32> {
    let mut bytes = [0u8; 4];
    input.read_exact(&mut bytes)?;
    Ok(u32::from_le_bytes(bytes))
}

impl HnswGraph {
    /// Writes the graph. No insert may run meanwhile (the index's maintainer is held), or a
    /// half-inserted node would be written; panics if one is in flight.
    pub fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        assert_eq!(
            self.inserting.load(Mem::Acquire),
            0,
            "an HNSW graph was written while inserts ran"
        );
        let len = self.len();
        out.write_all(&(self.m_upper as u32).to_le_bytes())?;
        out.write_all(&(self.dimension as u32).to_le_bytes())?;
        out.write_all(&(len as u64).to_le_bytes())?;
        out.write_all(&self.entry.load(Mem::Acquire).to_le_bytes())?;
        let levels: Vec<u8> = self.levels[..len]
            .iter()
            .map(|l| l.load(Mem::Acquire))
            .collect();
        out.write_all(&levels)?;
        let mut buf = Vec::new();
        for node in 0..len as Node {
            let list = self.vectors.list(node).iter().map(|w| w.load(Mem::Acquire));
            let code = self.vectors.get(node).iter().copied();
            write_words(out, list.chain(code), &mut buf)?;
        }
        for (node, level) in levels.iter().enumerate() {
            if *level > 0 {
                let upper = self.upper[node]
                    .get()
                    .ok_or_else(|| invalid(format!("node {node} has no upper lists")))?;
                write_words(out, upper.iter().map(|w| w.load(Mem::Acquire)), &mut buf)?;
            }
        }
        Ok(())
    }

    /// Reads a graph [`HnswGraph::write_to`] wrote, with room for a quarter more nodes (at
    /// least 1024) before it must grow, each node labelled with its own number. Refuses a graph
    /// of another `m` or dimension, of other than `nodes` nodes (checked before anything of
    /// that size is allocated), and anything inconsistent: a neighbour that does not exist or
    /// is not on the layer it is linked on, an entry point below the top layer, a code `space`
    /// cannot produce (the caller knows the space: its codebook is saved beside the graph).
    pub fn read_from(
        input: &mut dyn Read,
        dimension: usize,
        space: Space,
        params: GraphParams,
        nodes: usize,
    ) -> io::Result<HnswGraph> {
        let m = read_u32(input)? as usize;
        let stored_dimension = read_u32(input)? as usize;
        let len = read_u64(input)?;
        let entry = read_u64(input)?;
        let expected_m = params.m.clamp(2, 255);
        if m != expected_m || stored_dimension != dimension {
            return Err(invalid(format!(
                "saved with m {m} and dimension {stored_dimension}, not {expected_m} and {dimension}"
            )));
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l == nodes && *l < u32::MAX as usize)
            .ok_or_else(|| invalid(format!("{len} nodes, not {nodes}")))?;
        // Bounded before anything of that size is allocated: a count the stream cannot back
        // fails at the first read past its end, not in the allocator.
        let mut levels = Vec::with_capacity(len.min(1 << 20));
        let mut chunk = [0u8; 4096];
        while levels.len() < len {
            let take = (len - levels.len()).min(chunk.len());
            input.read_exact(&mut chunk[..take])?;
            levels.extend_from_slice(&chunk[..take]);
        }
        if let Some(level) = levels.iter().find(|l| **l as usize > MAX_LEVEL) {
            return Err(invalid(format!("a node of level {level}")));
        }
        let code_words = space.words(dimension);
        let graph = HnswGraph::new(dimension, space, params, len + (len / 4).max(1024));
        let list_words = graph.vectors.list(0).len();
        let slots = list_words - 1;
        // A walk on `layer` only ever steps to nodes that have lists on that layer.
        let check_list = |words: &[u32], layer: usize| -> io::Result<()> {
            let count = words[0] as usize;
            if count >= words.len() {
                return Err(invalid(format!(
                    "a list on layer {layer}: {count} neighbours"
                )));
            }
            for n in &words[1..=count] {
                match levels.get(*n as usize) {
                    None => {
                        return Err(invalid(format!(
                            "a list on layer {layer}: neighbour {n} of {len} nodes"
                        )));
                    }
                    Some(level) if (*level as usize) < layer => {
                        return Err(invalid(format!(
                            "a list on layer {layer}: neighbour {n} of level {level}"
                        )));
                    }
                    Some(_) => {}
                }
            }
            Ok(())
        };
        let mut buf = Vec::new();
        for node in 0..len as Node {
            let words = read_words(input, list_words + code_words, &mut buf)?;
            check_list(&words[..list_words], 0)?;
            let code = &words[list_words..];
            if !graph.space.valid(code) {
                return Err(invalid(format!(
                    "node {node} has a vector code out of range"
                )));
            }
            // SAFETY: the graph is not shared yet and each node is written once.
            unsafe { graph.vectors.write(node, code) };
            for (slot, word) in graph.vectors.list(node).iter().zip(&words[..list_words]) {
                slot.store(*word, Mem::Relaxed);
            }
            graph.labels[node as usize].store(node as usize, Mem::Relaxed);
        }
        debug_assert_eq!(slots, 2 * expected_m);
        let width = m + 1;
        for (node, level) in levels.iter().enumerate() {
            graph.levels[node].store(*level, Mem::Relaxed);
            let level = *level as usize;
            if level > 0 {
                let words = read_words(input, level * width, &mut buf)?;
                for (layer, list) in words.chunks_exact(width).enumerate() {
                    check_list(list, layer + 1)?;
                }
                let lists: Box<[AtomicU32]> = words.into_iter().map(AtomicU32::new).collect();
                let _ = graph.upper[node].set(lists);
            }
        }
        if entry == EMPTY {
            if len > 0 {
                return Err(invalid("nodes but no entry point"));
            }
        } else {
            let (node, level) = (entry as u32 as usize, (entry >> 32) as usize);
            let top = levels.iter().max().copied().unwrap_or(0) as usize;
            if node >= len || levels[node] as usize != level || level != top {
                return Err(invalid(format!(
                    "entry point {node} at level {level}, the top layer is {top}"
                )));
            }
        }
        graph.entry.store(entry, Mem::Release);
        graph.reserved.store(len, Mem::Release);
        Ok(graph)
    }
}
