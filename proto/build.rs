//! Generates sim.v1 with the protoc that scripts/setup.sh installs (Debian's
//! protobuf-compiler). Spec messages also derive serde: children receive them as JSON.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serde = "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]";
    tonic_prost_build::configure()
        .type_attribute(".sim.v1.ProducerSpec", serde)
        .type_attribute(".sim.v1.WorkerSpec", serde)
        .type_attribute(".sim.v1.WorkerFaults", serde)
        .type_attribute(".sim.v1.TraceSpec", serde)
        .type_attribute(".sim.v1.PartitionMap", serde)
        .type_attribute(".sim.v1.PartitionEntry", serde)
        // Spawn commands go into the coordinator's checkpoints. The path also matches the
        // nested oneof enum, where `serde(default)` is not allowed: derive only.
        .type_attribute(
            ".sim.v1.Spawn",
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        .compile_protos(&["proto/sim/v1/sim.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/sim/v1/sim.proto");
    Ok(())
}
