import ArgumentParser
import Foundation
import MeterCore

#if canImport(Glibc)
import Glibc
#endif

/// `meterctl import DIR --db PATH`: loads the company's CSV files (SPEC.md section 4).
struct ImportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Import the company's CSV files found in DIR.",
        discussion: """
            Files (each optional): \(CompanyImporter.fileOrder.joined(separator: ", ")). Each file is one \
            transaction: a bad row is reported as file:line: reason and nothing of that file is applied. \
            Importing the same files again changes nothing.
            """)

    @Argument(help: "Directory holding the CSV files.")
    var directory: String

    @Option(help: "Import straight into this database file (meterd must not be running on it).")
    var db: String?

    @OptionGroup var options: ConnectionOptions

    func run() async throws {
        guard let path = self.db else {
            try self.importThroughDaemon()
            return
        }
        let database = try MeterDatabase(path: path)
        let terminal = isatty(STDERR_FILENO) == 1
        let report = try CompanyImporter.importDirectory(self.directory, database: database) { progress in
            let percent = Int((progress.fraction * 100).rounded())
            let line = "\(progress.file): \(percent)% (\(progress.rows) rows)"
            FileHandle.standardError.write(Data((terminal ? "\r\(line)\u{1B}[K" + (percent >= 100 ? "\n" : "") : line + "\n").utf8))
        }
        print(report.text, terminator: "")
        if !report.succeeded || report.files.isEmpty { throw ExitCode(1) }
    }

    /// Hands the directory to the running meterd, the single writer; it reads the files itself.
    private func importThroughDaemon() throws {
        // Exit non-zero when a file was rejected, as the offline import does.
        var rejected = false
        let directory = URL(fileURLWithPath: self.directory).standardizedFileURL.path
        if isatty(STDERR_FILENO) == 1 { FileHandle.standardError.write(Data("importing \(directory) through meterd…\n".utf8)) }
        try self.options.run("import \(directory)", timeoutSeconds: 3600) { object in
            let files = object["files"] as? [[String: Any]] ?? []
            var out = files.isEmpty ? "no company files found in \(directory)\n" : ""
            for file in files {
                let errors = file["errors"] as? [String] ?? []
                if errors.isEmpty {
                    out += "\(OperatorOutput.text(file["file"])): \(OperatorOutput.text(file["rows"])) rows imported\n"
                } else {
                    rejected = true
                    out += "\(OperatorOutput.text(file["file"])): rejected, nothing of it applied\n" + errors.map { "  \($0)\n" }.joined()
                }
            }
            return out
        }
        if rejected { throw ExitCode(1) }
    }
}
