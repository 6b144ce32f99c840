/// A reading with the line of its connection it came on, so a rejection can name the line.
package struct SubmittedReading: Sendable {
    package var reading: Reading
    package var line: Int
    /// Daemon receive time in milliseconds since the Unix epoch.
    package var receivedMs: Int64

    package init(reading: Reading, line: Int, receivedMs: Int64) {
        self.reading = reading
        self.line = line
        self.receivedMs = receivedMs
    }
}

/// A rejected line on its way to the quarantine table.
package struct QuarantinedLine: Sendable {
    package var receivedMs: Int64
    package var peer: String
    package var line: Int
    package var rejection: Rejection
    package var raw: [UInt8]

    package init(receivedMs: Int64, peer: String, line: Int, rejection: Rejection, raw: [UInt8]) {
        self.receivedMs = receivedMs
        self.peer = peer
        self.line = line
        self.rejection = rejection
        self.raw = raw
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
    package mutating func ack(meter: String, seq: Int64, index: inout [String: Int]) {
        if let position = index[meter] {
            if self.acks[position].seq < seq { self.acks[position].seq = seq }
        } else {
            index[meter] = self.acks.count
            self.acks.append((meter, seq))
        }
    }
}

/// Whoever sent a submission and waits for its acks: a meter connection, an importer, a test.
package protocol AckReceiver: AnyObject, Sendable {
    /// Called from the writer thread after the commit holding the submission; must not block.
    func deliver(_ outcome: SubmissionOutcome)
}

/// Readings and rejected lines handed from one connection's read to the writer.
package struct IngestSubmission: Sendable {
    package var readings: [SubmittedReading]
    package var quarantined: [QuarantinedLine]
    package var receiver: (any AckReceiver)?
    /// Who sent it (a socket address), recorded with quarantined lines.
    package var peer: String

    package init(readings: [SubmittedReading], quarantined: [QuarantinedLine] = [], receiver: (any AckReceiver)?, peer: String = "") {
        self.readings = readings
        self.quarantined = quarantined
        self.receiver = receiver
        self.peer = peer
    }

    /// Units of queue capacity this submission takes.
    package var weight: Int { self.readings.count + self.quarantined.count }
}
