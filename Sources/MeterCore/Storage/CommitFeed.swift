import Foundation

/// Which committed transactions a database snapshot sees: PostgreSQL's `pg_snapshot`
/// (`xmin:xmax:xip,…`, 64-bit transaction ids), parsed once so visibility is checked in memory.
///
/// A KPI store loaded in a snapshot holds exactly the commits visible in it; a delta of a commit
/// it sees is already counted, any other is not (whatever order commits finished in).
package struct CommitSnapshot: Sendable, Equatable, CustomStringConvertible {
    package var xmin: UInt64
    package var xmax: UInt64
    /// Transactions in progress when the snapshot was taken.
    package var inProgress: Set<UInt64>

    /// Parses `pg_current_snapshot()::text`; `nil` when the text is not a snapshot.
    package init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 3, let xmin = UInt64(parts[0]), let xmax = UInt64(parts[1]) else { return nil }
        var inProgress = Set<UInt64>()
        for id in parts[2].split(separator: ",") {
            guard let id = UInt64(id) else { return nil }
            inProgress.insert(id)
        }
        self.xmin = xmin
        self.xmax = xmax
        self.inProgress = inProgress
    }

    /// Whether the committed transaction `xid` is visible in this snapshot.
    package func sees(_ xid: UInt64) -> Bool {
        if xid < self.xmin { return true }
        if xid >= self.xmax { return false }
        return !self.inProgress.contains(xid)
    }

    package var description: String {
        "\(self.xmin):\(self.xmax):" + self.inProgress.sorted().map(String.init).joined(separator: ",")
    }
}

/// What a node learns from the commit feed in one poll: the aggregate deltas other nodes committed
/// since the last poll, each exactly once.
package struct CommitFeedPoll: Sendable {
    package var deltas: [AggregateDelta] = []
    /// The feed lost track (first poll, or rows this node had not read yet were pruned): the
    /// in-memory KPI stores must load again; deltas from here on are complete.
    package var restarted = false
    /// A company import committed since the last poll (through any node, or `meterctl import
    /// --store`): meters' customers and regions may have changed, so the writer's meter cache and
    /// the ingest side's concentrator list must load again, as well as the KPI stores.
    package var companyDataChanged = false

    package init(deltas: [AggregateDelta] = [], restarted: Bool = false, companyDataChanged: Bool = false) {
        self.deltas = deltas
        self.restarted = restarted
        self.companyDataChanged = companyDataChanged
    }
}

/// The other nodes' commits, for a store that several nodes share (``MeterStore/makeCommitFeed()``).
package protocol CommitFeedSource: Sendable {
    /// The deltas committed by other nodes since the last poll.
    func poll() async throws -> CommitFeedPoll
    /// Deletes feed rows older than `keepingMs` (the database's clock); returns how many. Only the
    /// singleton leader prunes; a node that has not polled since loses track and reloads.
    func prune(keepingMs: Int64) async throws -> Int
}

/// A lock held by at most one node of a shared store at a time (``MeterStore/makeSingletonLock()``).
package protocol SingletonLock: Sendable {
    /// Takes the lock, or confirms it is still held; `false` when another node holds it or the
    /// database cannot be reached (then it is not held: the server frees it with the connection).
    func acquireOrConfirm() async -> Bool
    /// Gives up a try that hangs (a connection the network black-holes: no answer, no reset): drops
    /// its connection, so that try returns `false` and the next one starts on a new connection.
    func abandon() async
    /// Lets go of the lock, if held.
    func release() async
}

/// An ``AggregateDelta`` as bytes, for the commit feed: little-endian varints (zigzag for signed
/// values) and raw doubles, about 75 bytes per meter a commit touched. Started days and the
/// commit's transaction id travel beside it (the database knows them, the writer does not).
package enum CommitFeedPayload {
    package static let version: UInt8 = 1

    package static func encode(_ delta: AggregateDelta) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(16 + delta.months.count * 48 + delta.days.count * 14 + delta.meterReads.count * 20)
        out.append(Self.version)
        Self.put(&out, delta.firstReceivedMs ?? Int64.min)
        Self.put(&out, delta.lastReceivedMs ?? Int64.min)
        Self.put(&out, Int64(delta.months.count))
        for month in delta.months {
            Self.put(&out, month.meterID)
            Self.put(&out, Int64(month.month))
            Self.put(&out, month.kwh)
            Self.put(&out, month.revenue)
            Self.put(&out, Int64(month.readings))
            Self.put(&out, Int64(month.faults))
            Self.put(&out, Int64(month.good))
            Self.put(&out, Int64(month.fair))
            Self.put(&out, Int64(month.poor))
            Self.put(&out, month.latencySumMs)
            Self.put(&out, month.latencyMaxMs)
            Self.put(&out, Int64(month.estimated))
            if month.estimated != 0 || month.estimatedKwh != 0 { Self.put(&out, month.estimatedKwh) }
        }
        Self.put(&out, Int64(delta.days.count))
        for day in delta.days {
            Self.put(&out, day.meterID)
            Self.put(&out, Int64(day.day.key))
            Self.put(&out, Int64(day.readings))
            Self.put(&out, day.spacingSumMs)
            Self.put(&out, Int64(day.spacingCount))
        }
        Self.put(&out, Int64(delta.meterReads.count))
        for meter in delta.meterReads {
            Self.put(&out, meter.meterID)
            Self.put(&out, Int64(meter.firstDay))
            let name = Array(meter.name.utf8)
            Self.put(&out, Int64(name.count))
            out.append(contentsOf: name)
        }
        return out
    }

    /// Decodes what ``encode(_:)`` wrote; throws on anything else.
    package static func decode(_ bytes: some Collection<UInt8>) throws -> AggregateDelta {
        var reader = Reader(bytes: Array(bytes))
        guard try reader.byte() == Self.version else { throw CommitFeedError("unknown commit feed payload version") }
        var delta = AggregateDelta()
        let first = try reader.integer()
        let last = try reader.integer()
        delta.firstReceivedMs = first == Int64.min ? nil : first
        delta.lastReceivedMs = last == Int64.min ? nil : last
        let months = try reader.count()
        delta.months.reserveCapacity(months)
        for _ in 0..<months {
            var month = AggregateDelta.Month(meterID: try reader.integer(), month: Int(try reader.integer()))
            month.kwh = try reader.double()
            month.revenue = try reader.double()
            month.readings = Int(try reader.integer())
            month.faults = Int(try reader.integer())
            month.good = Int(try reader.integer())
            month.fair = Int(try reader.integer())
            month.poor = Int(try reader.integer())
            month.latencySumMs = try reader.integer()
            month.latencyMaxMs = try reader.integer()
            month.estimated = Int(try reader.integer())
            if month.estimated != 0 { month.estimatedKwh = try reader.double() }
            delta.months.append(month)
        }
        let days = try reader.count()
        delta.days.reserveCapacity(days)
        for _ in 0..<days {
            let meterID = try reader.integer()
            let day = Day(key: Int(try reader.integer()))
            delta.days.append(
                ReadDayFacts.MeterDay(
                    meterID: meterID, day: day, readings: Int(try reader.integer()), spacingSumMs: try reader.integer(),
                    spacingCount: Int(try reader.integer())))
        }
        let meters = try reader.count()
        for _ in 0..<meters {
            let meterID = try reader.integer()
            let firstDay = Int(try reader.integer())
            let name = try reader.text()
            delta.meterReads.append(.init(meterID: meterID, name: name, firstDay: firstDay))
        }
        guard reader.atEnd else { throw CommitFeedError("trailing bytes in a commit feed payload") }
        return delta
    }

    private static func put(_ out: inout [UInt8], _ value: Int64) {
        var zigzag = UInt64(bitPattern: (value << 1) ^ (value >> 63))
        while zigzag >= 0x80 {
            out.append(UInt8(truncatingIfNeeded: zigzag) | 0x80)
            zigzag >>= 7
        }
        out.append(UInt8(zigzag))
    }

    private static func put(_ out: inout [UInt8], _ value: Double) {
        var bits = value.bitPattern.littleEndian
        withUnsafeBytes(of: &bits) { out.append(contentsOf: $0) }
    }

    private struct Reader {
        let bytes: [UInt8]
        var index = 0

        var atEnd: Bool { self.index == self.bytes.count }

        mutating func byte() throws -> UInt8 {
            guard self.index < self.bytes.count else { throw CommitFeedError("truncated commit feed payload") }
            defer { self.index += 1 }
            return self.bytes[self.index]
        }

        mutating func integer() throws -> Int64 {
            var value: UInt64 = 0
            var shift: UInt64 = 0
            while true {
                let byte = try self.byte()
                guard shift < 64 else { throw CommitFeedError("malformed varint in a commit feed payload") }
                value |= UInt64(byte & 0x7F) << shift
                if byte < 0x80 { break }
                shift += 7
            }
            return Int64(bitPattern: value >> 1) ^ -Int64(bitPattern: value & 1)
        }

        mutating func count() throws -> Int {
            let count = try self.integer()
            guard count >= 0, count <= self.bytes.count - self.index else { throw CommitFeedError("bad count in a commit feed payload") }
            return Int(count)
        }

        mutating func double() throws -> Double {
            guard self.index + 8 <= self.bytes.count else { throw CommitFeedError("truncated commit feed payload") }
            var bits: UInt64 = 0
            for offset in 0..<8 { bits |= UInt64(self.bytes[self.index + offset]) << (8 * UInt64(offset)) }
            self.index += 8
            return Double(bitPattern: bits)
        }

        mutating func text() throws -> String {
            let length = try self.count()
            defer { self.index += length }
            return String(decoding: self.bytes[self.index..<self.index + length], as: UTF8.self)
        }
    }
}

/// A commit feed row that cannot be read.
package struct CommitFeedError: Error, CustomStringConvertible {
    package var description: String

    package init(_ description: String) {
        self.description = description
    }
}
