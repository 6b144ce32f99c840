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

    func run() async throws {
        guard let path = self.db else {
            throw ValidationError("importing through a running meterd needs the status socket, which this build lacks; pass --db PATH")
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
}
