/// An error answer of the status socket: `{"error":"<code>","detail":"…"}`.
package struct ErrorAnswer: Codable, Sendable, Equatable {
    /// Machine-readable code, such as `unknown_meter`.
    package var error: String
    package var detail: String?
}

/// The status socket's `snapshot` answer: where the KPI snapshot was written.
package struct SnapshotAnswer: Codable, Sendable, Equatable {
    package var snapshot: String
}

/// The status socket's `backup FILE` answer.
package struct BackupAnswer: Codable, Sendable, Equatable {
    package var backup: String
    package var bytes: Int64
    package var seconds: Double
}

/// The status socket's `progress` answer: the running import, `null` when none runs.
package struct ImportProgressAnswer: Codable, Sendable, Equatable {
    package var `import`: Progress?

    /// Where the running import stands.
    package struct Progress: Codable, Sendable, Equatable {
        package var file: String
        package var rows: Int
        /// Share of the file read, 0...1.
        package var fraction: Double

        package init(file: String, rows: Int, fraction: Double) {
            self.file = file
            self.rows = rows
            self.fraction = fraction
        }

        /// What `meterctl import` shows. Until the writer takes the import up, the daemon names the
        /// directory with nothing read: a percentage of it would read as a file's.
        package var line: String {
            let percent = Int((self.fraction * 100).rounded())
            return self.rows == 0 && percent == 0 ? "\(self.file): starting" : "\(self.file): \(percent)% (\(self.rows) rows)"
        }
    }
}
