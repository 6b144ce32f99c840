/// The status socket's `import DIR` answer: whether every file was applied, and per file its rows,
/// time and problems (`file:line: reason`).
package struct ImportAnswer: Codable, Sendable, Equatable {
    /// Whether every file found was applied.
    package var imported: Bool
    package var files: [File]

    /// What importing one file did.
    package struct File: Codable, Sendable, Equatable {
        package var file: String
        /// Rows applied (0 when the file was rejected).
        package var rows: Int
        package var seconds: Double
        /// Why the file was rejected; empty when it was applied.
        package var errors: [String]

        /// Whether the file was applied.
        package var succeeded: Bool { self.errors.isEmpty }
    }
}

extension ImportAnswer {
    /// The answer for an import's report.
    package init(_ report: ImportReport) {
        self.init(
            imported: report.succeeded,
            files: report.files.map { file in
                File(file: file.file, rows: file.rows, seconds: file.seconds, errors: file.errors.map(\.description))
            })
    }
}
