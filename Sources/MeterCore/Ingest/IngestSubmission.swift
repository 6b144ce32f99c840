import NIOCore

/// A reading with the line of its connection it came on, so a rejection can name the line.
package struct SubmittedReading: Sendable {
    package var reading: Reading
    package var line: Int
    /// Daemon receive time in milliseconds since the Unix epoch.
    package var receivedMs: Int64
    /// The line as the meter sent it, when the writer may have to quarantine it
    /// (``LineLimits/keepsReadingBytes``).
    package var bytes: [UInt8]?

    package init(reading: Reading, line: Int, receivedMs: Int64, bytes: [UInt8]? = nil) {
        self.reading = reading
        self.line = line
        self.receivedMs = receivedMs
        self.bytes = bytes
    }
}

/// A rejected line on its way to the quarantine table.
package struct QuarantinedLine: Sendable {
    package var receivedMs: Int64
    package var peer: String
    package var line: Int
    package var rejection: Rejection
    package var raw: [UInt8]
    /// Who the peer's client certificate says it is (``MeterIdentity``), when it presented one.
    package var peerIdentity: String?

    package init(receivedMs: Int64, peer: String, line: Int, rejection: Rejection, raw: [UInt8], peerIdentity: String? = nil) {
        self.receivedMs = receivedMs
        self.peer = peer
        self.line = line
        self.rejection = rejection
        self.raw = raw
        self.peerIdentity = peerIdentity
    }
}

/// What one commit means for one sender: the acks it may send and the lines the writer rejected.
package struct SubmissionOutcome: Sendable {
    /// Highest committed (or duplicate) seq per meter, in first-seen order.
    package var acks: [(meter: String, seq: Int64)] = []
    /// Readings the writer refused (an unknown meter under `unknown_meters = reject`).
    package var rejections: [(line: Int, rejection: Rejection)] = []
    /// How many of the receiver's submissions this outcome settles.
    package var submissions = 1

    package init() {}

    /// Coalesces an ack: the highest seq per meter wins.
    ///
    /// `index` finds a meter's ack among many; a connection usually speaks for one meter or a few,
    /// so up to ``linearAcks`` acks are searched in place and the index stays empty (no hashing).
    package mutating func ack(meter: String, seq: Int64, index: inout [String: Int]) {
        if index.isEmpty {
            for position in self.acks.indices where self.acks[position].meter == meter {
                if self.acks[position].seq < seq { self.acks[position].seq = seq }
                return
            }
            self.acks.append((meter, seq))
            if self.acks.count > Self.linearAcks {
                index.reserveCapacity(self.acks.count * 2)
                for (position, ack) in self.acks.enumerated() { index[ack.meter] = position }
            }
        } else if let position = index[meter] {
            if self.acks[position].seq < seq { self.acks[position].seq = seq }
        } else {
            index[meter] = self.acks.count
            self.acks.append((meter, seq))
        }
    }

    /// Acks searched in place before ``ack(meter:seq:index:)`` builds an index.
    static let linearAcks = 8
}

/// Whoever sent a submission and waits for its acks: a meter connection, an importer, a test.
package protocol AckReceiver: AnyObject, Sendable {
    /// Called from the writer thread after the commit holding the submission; must not block.
    /// Not called when ``eventLoop`` is set: ``deliverOnEventLoop(_:)`` is, instead.
    func deliver(_ outcome: SubmissionOutcome)

    /// The event loop the receiver lives on, if any: the pipeline then hands the outcomes of one
    /// commit for all receivers on a loop over in a single task, rather than one task each.
    var eventLoop: (any EventLoop)? { get }

    /// Called on ``eventLoop`` with the outcome of a commit.
    func deliverOnEventLoop(_ outcome: SubmissionOutcome)
}

extension AckReceiver {
    package var eventLoop: (any EventLoop)? { nil }
    package func deliverOnEventLoop(_ outcome: SubmissionOutcome) { self.deliver(outcome) }
}

/// Readings and rejected lines handed from one connection's read to the writer.
package struct IngestSubmission: Sendable {
    package var readings: [SubmittedReading]
    package var quarantined: [QuarantinedLine]
    package var receiver: (any AckReceiver)?
    /// Who sent it (a socket address), recorded with quarantined lines.
    package var peer: String
    /// Who the sender's client certificate says it is, recorded with quarantined lines.
    package var peerIdentity: String?

    package init(
        readings: [SubmittedReading], quarantined: [QuarantinedLine] = [], receiver: (any AckReceiver)?, peer: String = "",
        peerIdentity: String? = nil
    ) {
        self.readings = readings
        self.quarantined = quarantined
        self.receiver = receiver
        self.peer = peer
        self.peerIdentity = peerIdentity
    }

    /// Units of queue capacity this submission takes.
    package var weight: Int { self.readings.count + self.quarantined.count }
}
