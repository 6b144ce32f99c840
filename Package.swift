// swift-tools-version:6.2
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

/// `METERD_FUZZ=1` (scripts/fuzz.sh) adds the libFuzzer target and instruments MeterCore for it;
/// ordinary builds never see that target, which only links with `-sanitize=fuzzer`.
let fuzzing = Context.environment["METERD_FUZZ"] != nil
let fuzzerFlags = ["-sanitize=fuzzer,address"]

let package = Package(
    name: "meterd",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "meterd", targets: ["MeterDaemon"]),
        .executable(name: "meterctl", targets: ["MeterCtl"]),
        .executable(name: "meter-sim", targets: ["MeterSimulator"]),
        .executable(name: "meter-bench", targets: ["MeterBenchmarks"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-auth.git", from: "2.5.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
    ],
    targets: [
        .systemLibrary(
            name: "CSQLite",
            pkgConfig: "sqlite3",
            providers: [.apt(["libsqlite3-dev"])]
        ),
        .systemLibrary(
            name: "CSystemd",
            pkgConfig: "libsystemd",
            providers: [.apt(["libsystemd-dev"])]
        ),
        .target(
            name: "MeterCore",
            dependencies: [
                "CSQLite",
                "CSystemd",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "HummingbirdBcrypt", package: "hummingbird-auth"),
                // Only Storage/PostgreSQL/ imports it, as only Storage/SQLite/ imports GRDB.
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ],
            // The dashboard's page, stylesheet and script, compiled into the binary as byte arrays.
            resources: [.embedInCode("Dashboard/Assets")],
            swiftSettings: swiftSettings + (fuzzing ? [.unsafeFlags(fuzzerFlags)] : [])
        ),
        // The simulated fleet and the company data generator: meter-sim and the tests, never meterd.
        .target(
            name: "SimulatorCore",
            dependencies: [
                "MeterCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "MeterDaemon",
            dependencies: [
                "MeterCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "MeterCtl",
            dependencies: [
                "MeterCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "MeterSimulator",
            dependencies: [
                "MeterCore",
                "SimulatorCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Simulator",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "MeterBenchmarks",
            dependencies: [
                "MeterCore",
                "SimulatorCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            path: "Benchmarks/MeterBenchmarks",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "MeterCoreTests",
            dependencies: [
                "MeterCore",
                "SimulatorCore",
                // Built before the tests, which run the real executables.
                "MeterDaemon",
                "MeterCtl",
                "MeterSimulator",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            exclude: ["Golden"],  // expected answers, read by GoldenAnswerTests from the source tree
            swiftSettings: swiftSettings
        ),
    ]
)

if fuzzing {
    package.targets.append(
        .executableTarget(
            name: "ReadingParserFuzzer",
            dependencies: ["MeterCore"],
            path: "Fuzz",
            exclude: ["corpus", "reading.dict"],
            swiftSettings: swiftSettings + [.unsafeFlags(fuzzerFlags)],
            // lld: gold fails on this link with an internal error.
            linkerSettings: [.unsafeFlags(fuzzerFlags + ["-use-ld=lld"])]
        )
    )
}
