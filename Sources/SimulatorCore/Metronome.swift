import NIOCore

/// Ticks the connections of one event loop once per interval, each at its own phase, from one
/// scheduled task per loop rather than a repeated task per connection.
///
/// NIO keeps scheduled tasks in a heap: with 10,000 connections' repeated tasks in it, its
/// sift-downs (each copying tasks and retaining and releasing their closures) took about a quarter
/// of meter-sim's CPU at one reading per second per meter, CPU that a benchmark's meterd shares.
/// Here the interval is a wheel of slots (a thousandth of it, at least 1 ms): a connection waits in
/// the slot of its phase, and each tick runs one slot's connections.
///
/// Used on its event loop only (hence unchecked), as its connections are.
final class Metronome: @unchecked Sendable {
    private let eventLoop: any EventLoop
    private let slotNanoseconds: Int64
    private var slots: [[SimulatedConnection]]
    private let started: NIODeadline
    /// The next slot to run, counted from `started` (not wrapped).
    private var nextTick: Int64 = 0
    private var scheduled = false
    /// Connections in the wheel: once none is left, nothing is scheduled.
    private var members = 0

    init(eventLoop: any EventLoop, interval: TimeAmount) {
        self.eventLoop = eventLoop
        let slotNanoseconds = max(interval.nanoseconds / 1_000, 1_000_000)
        self.slotNanoseconds = slotNanoseconds
        self.slots = Array(repeating: [], count: Int(max(1, interval.nanoseconds / slotNanoseconds)))
        self.started = .now()
    }

    /// Ticks `connection` from `phase` from now, then once per interval, for as long as its
    /// ``SimulatedConnection/metronomeTick()`` answers true.
    func add(_ connection: SimulatedConnection, phase: TimeAmount) {
        self.eventLoop.assertInEventLoop()
        let due = (NIODeadline.now() + phase - self.started).nanoseconds / self.slotNanoseconds
        // A slot already passed in this turn of the wheel waits for the next turn.
        let tick = max(due, self.nextTick)
        self.slots[Int(tick % Int64(self.slots.count))].append(connection)
        self.members += 1
        self.scheduleNext()
    }

    private func scheduleNext() {
        guard !self.scheduled else { return }
        self.scheduled = true
        let deadline = self.started + .nanoseconds(self.nextTick * self.slotNanoseconds)
        self.eventLoop.scheduleTask(deadline: deadline) { [self] in
            self.scheduled = false
            self.runDueSlots()
        }
    }

    /// Runs every slot whose time has come (more than one when the loop was busy), in order.
    private func runDueSlots() {
        let now = NIODeadline.now()
        while self.started + .nanoseconds(self.nextTick * self.slotNanoseconds) <= now {
            let slot = Int(self.nextTick % Int64(self.slots.count))
            self.nextTick += 1
            let connections = self.slots[slot]
            self.slots[slot] = []
            for connection in connections {
                if connection.metronomeTick() {
                    self.slots[slot].append(connection)
                } else {
                    self.members -= 1
                }
            }
        }
        if self.members > 0 { self.scheduleNext() }
    }
}
