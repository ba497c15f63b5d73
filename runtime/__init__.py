"""wasmtime runtime: artifacts, compiled cache, instance pools, ABIs, capabilities, limits."""
