//! Churn: nodes coming up and going down (`Ev::Up`, `Ev::Down`), and how long they stay.
//!
//! A node's session and offline times are drawn from the scenario's distributions (clients
//! and workers apart; relays churn as workers; the bootstrap nodes never do). Churn keeps
//! no state of its own beyond the node table's `online` flag: bringing a node up or down
//! tells each subsystem, in a fixed order. Up: a restarted node joins the DHT, mesh members
//! rejoin the mesh, a worker starts its price ticks (and provides its models when it
//! rejoined), a client starts asking for jobs. Down: the node leaves the mesh, and a
//! worker's running jobs stall (see `jobs`).

use rand::Rng;

use super::{Ev, Kind, World};
use crate::engine::{Micros, SEC};
use crate::kad::{Node, Purpose};

impl World {
    /// `node` comes up; with `join`, with an empty routing table (it joins through the
    /// bootstrap nodes and provides its models again).
    pub(super) fn bring_up(&mut self, node: Node, join: bool) {
        let i = node as usize;
        if self.nodes.online[i] {
            return;
        }
        self.nodes.online[i] = true;
        if self.sc.churn.enabled && !self.nodes.always_on[i] {
            let d = self.session_time(node);
            self.eng.after(d.max(SEC), Ev::Down(node));
        }
        if join {
            // A restarted node has an empty table: it joins through the bootstrap nodes.
            self.start_join(node);
        }
        self.join_mesh(node);
        match self.nodes.kind[i] {
            Kind::Worker(w) => {
                let wk = &mut self.workers[w as usize];
                wk.epoch += 1;
                let epoch = wk.epoch;
                // A random phase, so workers do not tick in lockstep.
                let phase = self
                    .eng
                    .rng
                    .random_range(0..self.sc.workers.price_tick_secs * SEC);
                self.eng.after(phase, Ev::Tick { worker: w, epoch });
                if join {
                    for m in self.workers[w as usize].models.clone() {
                        let key = self.models.keys[m as usize];
                        self.start_lookup(node, key, Purpose::Provide(m));
                    }
                }
            }
            Kind::Client(c) => {
                let cl = &mut self.clients[c as usize];
                cl.epoch += 1;
                cl.attached = None;
                let epoch = cl.epoch;
                self.schedule_arrival(c, epoch);
            }
            Kind::Relay => {}
        }
    }

    /// `node` goes down until its offline time has passed.
    pub(super) fn bring_down(&mut self, node: Node) {
        let i = node as usize;
        if !self.nodes.online[i] {
            return;
        }
        self.nodes.online[i] = false;
        let d = self.offline_time(node) as Micros;
        self.eng.after(d.max(SEC), Ev::Up(node));
        self.leave_mesh(node);
        if let Kind::Worker(w) = self.nodes.kind[i] {
            self.worker_died(w);
        }
    }

    /// A session length for `node`, µs.
    fn session_time(&mut self, node: Node) -> Micros {
        let d = match self.nodes.kind[node as usize] {
            Kind::Client(_) => self.sc.churn.client_session,
            _ => self.sc.churn.worker_session,
        };
        (self.eng.sample(&d) * SEC as f64) as Micros
    }

    /// An offline time for `node`, µs.
    pub(super) fn offline_time(&mut self, node: Node) -> f64 {
        let d = match self.nodes.kind[node as usize] {
            Kind::Client(_) => self.sc.churn.client_offline,
            _ => self.sc.churn.worker_offline,
        };
        self.eng.sample(&d) * SEC as f64
    }
}
