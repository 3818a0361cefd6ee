// Minimal TensorRT inference in C++ with this bundle's engine (model.plan, built on the device by
// build_engine.py or build_engine.sh). TensorRT 10.x / 11.x API: IRuntime::deserializeCudaEngine,
// IExecutionContext::setTensorAddress + enqueueV3. Input: one preprocessed float32 NCHW sample
// (preprocess.py shows the steps: colour order, resize + centre crop, /255, (x - mean) / std).
// Written against NVIDIA's headers; NOT compiled or run by this project (no TensorRT where it is built).
//
//   g++ -O2 -std=c++17 infer.cpp -o infer -I/usr/include/aarch64-linux-gnu -I/usr/local/cuda/include \
//       -L/usr/local/cuda/lib64 -lnvinfer -lcudart
//   ./infer model.plan input.f32        # input.f32: raw float32 NCHW bytes of one sample
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <vector>

class Logger : public nvinfer1::ILogger {
    void log(Severity severity, const char* msg) noexcept override {
        if (severity <= Severity::kWARNING) std::cerr << msg << "\n";
    }
};

static std::vector<char> readFile(const char* path) {
    std::ifstream f(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

static size_t volume(const nvinfer1::Dims& d) {
    size_t n = 1;
    for (int i = 0; i < d.nbDims; ++i) n *= d.d[i] < 0 ? 1 : d.d[i];
    return n;
}

int main(int argc, char** argv) {
    if (argc < 3) { std::cerr << "usage: infer model.plan input.f32\n"; return 2; }
    Logger logger;
    std::vector<char> plan = readFile(argv[1]);
    std::unique_ptr<nvinfer1::IRuntime> runtime{nvinfer1::createInferRuntime(logger)};
    std::unique_ptr<nvinfer1::ICudaEngine> engine{runtime->deserializeCudaEngine(plan.data(), plan.size())};
    if (!engine) { std::cerr << "cannot deserialize " << argv[1] << " (built by another TensorRT/GPU?)\n"; return 2; }
    std::unique_ptr<nvinfer1::IExecutionContext> ctx{engine->createExecutionContext()};

    const char* in = nullptr; const char* out = nullptr;
    for (int i = 0; i < engine->getNbIOTensors(); ++i) {
        const char* name = engine->getIOTensorName(i);
        (engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? in : out) = name;
    }
    nvinfer1::Dims inDims = engine->getTensorShape(in);
    if (inDims.d[0] == -1) { inDims.d[0] = 1; ctx->setInputShape(in, inDims); }   // dynamic batch: one sample
    nvinfer1::Dims outDims = ctx->getTensorShape(out);

    std::vector<char> raw = readFile(argv[2]);
    std::vector<float> host_in(volume(inDims)), host_out(volume(outDims));
    if (raw.size() != host_in.size() * sizeof(float)) { std::cerr << "input has the wrong size\n"; return 2; }
    std::copy(raw.begin(), raw.end(), reinterpret_cast<char*>(host_in.data()));

    void *d_in, *d_out;
    cudaMalloc(&d_in, host_in.size() * sizeof(float));
    cudaMalloc(&d_out, host_out.size() * sizeof(float));
    cudaStream_t stream;
    cudaStreamCreate(&stream);
    cudaMemcpyAsync(d_in, host_in.data(), host_in.size() * sizeof(float), cudaMemcpyHostToDevice, stream);
    ctx->setTensorAddress(in, d_in);
    ctx->setTensorAddress(out, d_out);
    if (!ctx->enqueueV3(stream)) { std::cerr << "enqueueV3 failed\n"; return 2; }
    cudaMemcpyAsync(host_out.data(), d_out, host_out.size() * sizeof(float), cudaMemcpyDeviceToHost, stream);
    cudaStreamSynchronize(stream);

    size_t best = 0;
    for (size_t k = 1; k < host_out.size(); ++k) if (host_out[k] > host_out[best]) best = k;
    std::printf("class %zu (logit %.3f); labels are in manifest.json\n", best, host_out[best]);
    cudaFree(d_in); cudaFree(d_out); cudaStreamDestroy(stream);
    return 0;
}
