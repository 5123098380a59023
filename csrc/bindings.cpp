// flashattn_py._cuda: the pybind11 face of the CUDA kernels (launch.h).
//
// Python fills an AttentionParams with raw device pointers, shapes and element strides (all plain
// ints) and passes the CUDA stream as an int (torch.cuda.current_stream().cuda_stream): no torch C++
// header is included, so one wheel works next to any torch build. flashattn_py/backends/cuda_backend.py is
// the only caller; it owns the semantics (shapes, padding, encodings), this file only transports.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include <cuda_runtime.h>

#include "errors.h"
#include "launch.h"
#include "params.h"

// Set by CMakeLists.txt from FLASHATTN_CUDA_ARCHS: what build_info() reports.
#if !defined(FLASHATTN_SASS_ARCHS) || !defined(FLASHATTN_PTX_ARCHS)
#error "FLASHATTN_SASS_ARCHS / FLASHATTN_PTX_ARCHS are defined by CMakeLists.txt: build with pip install ."
#endif

namespace py = pybind11;
using namespace flashattn;

namespace {

constexpr int kMinComputeMajor = 8;  // sm_80+: the kernels use mma.sync bf16/fp16 and cp.async

// Raises a RuntimeError that says what is missing when there is no usable GPU; otherwise makes
// `device` current (the runtime linked here keeps its own notion of the current device, so the
// one torch set is not inherited) and checks it is sm_80 or newer.
void require_device(int device) {
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    std::string why = status == cudaSuccess ? std::string("no device found")
                                            : std::string(cudaGetErrorName(status)) + ": " +
                                                  cudaGetErrorString(status);
    cudaGetLastError();  // reset the (non-sticky) error state
    throw std::runtime_error("flashattn_py: no CUDA device (" + why +
                             "); the cuda backend needs an NVIDIA GPU (sm_80+) and a driver for CUDA " +
                             std::to_string(CUDART_VERSION / 1000) + "." +
                             std::to_string(CUDART_VERSION % 1000 / 10) + "+");
  }
  if (device < 0 || device >= count) {
    throw std::runtime_error("flashattn_py: CUDA device " + std::to_string(device) + " does not exist (" +
                             std::to_string(count) + " visible)");
  }
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  int major = 0, minor = 0;
  check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
             "cudaDeviceGetAttribute(compute capability major)");
  check_cuda(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device),
             "cudaDeviceGetAttribute(compute capability minor)");
  if (major < kMinComputeMajor) {
    throw std::runtime_error("flashattn_py: CUDA device " + std::to_string(device) + " is sm_" +
                             std::to_string(major * 10 + minor) +
                             "; the cuda backend needs an NVIDIA GPU (sm_80+); use backend='triton'");
  }
}

cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

// True when FLASHATTN_SASS_ARCHS (comma-separated) lists 90a: the build has the Hopper kernels' code.
bool built_with_sm90a() {
  const std::string archs = std::string(",") + FLASHATTN_SASS_ARCHS + ",";
  return archs.find(",90a,") != std::string::npos;
}

// hopper/route.h's context for `device` (current after require_device); `requested` is the user's opt-in.
hopper::Sm90Context sm90_context(int device, bool requested) {
  hopper::Sm90Context c;
  c.requested = requested;
  c.compiled = built_with_sm90a();
  check_cuda(cudaDeviceGetAttribute(&c.cc_major, cudaDevAttrComputeCapabilityMajor, device),
             "cudaDeviceGetAttribute(compute capability major)");
  check_cuda(cudaDeviceGetAttribute(&c.cc_minor, cudaDevAttrComputeCapabilityMinor, device),
             "cudaDeviceGetAttribute(compute capability minor)");
  return c;
}

// An int the runtime reports through an out-parameter (device count, driver version), or 0 when it
// cannot (no GPU, no driver): for the probes Python calls without a GPU, which must never raise.
int runtime_int_or_zero(cudaError_t (*query)(int*)) {
  int value = 0;
  if (query(&value) != cudaSuccess) {
    cudaGetLastError();  // reset the (non-sticky) error state
    return 0;
  }
  return value;
}

// A read-write Python property for a pointer field, seen from Python as an int (an address).
template <typename Class, typename Pointer>
void pointer_field(py::class_<Class>& cls, const char* name, Pointer Class::*field) {
  cls.def_property(
      name, [field](const Class& self) { return reinterpret_cast<std::uintptr_t>(self.*field); },
      [field](Class& self, std::uintptr_t address) { self.*field = reinterpret_cast<Pointer>(address); });
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "flashattn_py CUDA kernels (csrc/): forward and backward attention with fused positional encodings";

  py::enum_<DType>(m, "DType").value("float16", DType::kFloat16).value("bfloat16", DType::kBFloat16);
  m.attr("PE_NONE") = static_cast<int>(PEKind::kNone);
  m.attr("PE_ROTARY") = static_cast<int>(PEKind::kRotary);
  m.attr("PE_SINUSOIDAL") = static_cast<int>(PEKind::kSinusoidal);
  m.attr("CUDART_VERSION") = CUDART_VERSION;

  py::class_<Strides>(m, "Strides", "Element strides of a bshd tensor (head dim contiguous)")
      .def(py::init<>())
      .def(py::init([](int64_t batch, int64_t seq, int64_t head) { return Strides{batch, seq, head}; }),
           py::arg("batch"), py::arg("seq"), py::arg("head"))
      .def_readwrite("batch", &Strides::batch)
      .def_readwrite("seq", &Strides::seq)
      .def_readwrite("head", &Strides::head)
      .def("__repr__", [](const Strides& s) {
        return "Strides(batch=" + std::to_string(s.batch) + ", seq=" + std::to_string(s.seq) +
               ", head=" + std::to_string(s.head) + ")";
      });

  py::class_<PositionalParams> pe(m, "PositionalParams", "Positional encoding of q/k tiles (params.h)");
  pe.def(py::init<>())
      .def_readwrite("kind", &PositionalParams::kind)
      .def_readwrite("dim", &PositionalParams::dim)
      .def_readwrite("interleaved", &PositionalParams::interleaved)
      .def_readwrite("log2_base", &PositionalParams::log2_base)
      .def_readwrite("scale", &PositionalParams::scale)
      .def_readwrite("table_stride", &PositionalParams::table_stride)
      .def_readwrite("q_pos_stride_b", &PositionalParams::q_pos_stride_b)
      .def_readwrite("q_pos_stride_s", &PositionalParams::q_pos_stride_s)
      .def_readwrite("k_pos_stride_b", &PositionalParams::k_pos_stride_b)
      .def_readwrite("k_pos_stride_s", &PositionalParams::k_pos_stride_s)
      .def_readwrite("k_encoded", &PositionalParams::k_encoded)
      .def_readwrite("q_encoded", &PositionalParams::q_encoded);
  pointer_field(pe, "cos", &PositionalParams::cos);
  pointer_field(pe, "sin", &PositionalParams::sin);
  pointer_field(pe, "q_pos", &PositionalParams::q_pos);
  pointer_field(pe, "k_pos", &PositionalParams::k_pos);

  py::class_<ScoreModParams> mods(m, "ScoreModParams", "Softcap and ALiBi of the scores (params.h)");
  mods.def(py::init<>())
      .def_readwrite("softcap", &ScoreModParams::softcap)
      .def_readwrite("alibi_stride_b", &ScoreModParams::alibi_stride_b)
      .def_readwrite("alibi_stride_h", &ScoreModParams::alibi_stride_h);
  pointer_field(mods, "alibi_slopes", &ScoreModParams::alibi_slopes);

  py::class_<AttentionParams> params(m, "AttentionParams", "Every kernel argument (csrc/params.h)");
  params.def(py::init<>())
      .def_readwrite("dtype", &AttentionParams::dtype)
      .def_readwrite("batch", &AttentionParams::batch)
      .def_readwrite("seqlen_q", &AttentionParams::seqlen_q)
      .def_readwrite("seqlen_k", &AttentionParams::seqlen_k)
      .def_readwrite("nheads_q", &AttentionParams::nheads_q)
      .def_readwrite("nheads_kv", &AttentionParams::nheads_kv)
      .def_readwrite("head_dim", &AttentionParams::head_dim)
      .def_readwrite("softmax_scale", &AttentionParams::softmax_scale)
      .def_readwrite("window_left", &AttentionParams::window_left)
      .def_readwrite("window_right", &AttentionParams::window_right)
      .def_readwrite("top_left", &AttentionParams::top_left)
      .def_readwrite("q_strides", &AttentionParams::q_strides)
      .def_readwrite("k_strides", &AttentionParams::k_strides)
      .def_readwrite("v_strides", &AttentionParams::v_strides)
      .def_readwrite("out_strides", &AttentionParams::out_strides)
      .def_readwrite("dout_strides", &AttentionParams::dout_strides)
      .def_readwrite("dq_strides", &AttentionParams::dq_strides)
      .def_readwrite("dk_strides", &AttentionParams::dk_strides)
      .def_readwrite("dv_strides", &AttentionParams::dv_strides)
      .def_readwrite("dq_accum_strides", &AttentionParams::dq_accum_strides)
      .def_readwrite("pe", &AttentionParams::pe)
      .def_readwrite("mods", &AttentionParams::mods)
      .def_readwrite("block_table_stride", &AttentionParams::block_table_stride)
      .def_readwrite("page_size", &AttentionParams::page_size)
      .def_readwrite("num_splits", &AttentionParams::num_splits)
      .def_readwrite("total_q", &AttentionParams::total_q)
      .def_readwrite("total_k", &AttentionParams::total_k);
  pointer_field(params, "q", &AttentionParams::q);
  pointer_field(params, "k", &AttentionParams::k);
  pointer_field(params, "v", &AttentionParams::v);
  pointer_field(params, "out", &AttentionParams::out);
  pointer_field(params, "lse", &AttentionParams::lse);
  pointer_field(params, "dout", &AttentionParams::dout);
  pointer_field(params, "dq", &AttentionParams::dq);
  pointer_field(params, "dk", &AttentionParams::dk);
  pointer_field(params, "dv", &AttentionParams::dv);
  pointer_field(params, "delta", &AttentionParams::delta);
  pointer_field(params, "dq_accum", &AttentionParams::dq_accum);
  pointer_field(params, "cu_seqlens_q", &AttentionParams::cu_seqlens_q);
  pointer_field(params, "cu_seqlens_k", &AttentionParams::cu_seqlens_k);
  pointer_field(params, "seqused_k", &AttentionParams::seqused_k);
  pointer_field(params, "leftpad_k", &AttentionParams::leftpad_k);
  pointer_field(params, "block_table", &AttentionParams::block_table);
  pointer_field(params, "out_accum", &AttentionParams::out_accum);
  pointer_field(params, "lse_accum", &AttentionParams::lse_accum);

  m.def(
      "device_count", [] { return runtime_int_or_zero(cudaGetDeviceCount); },
      "Number of CUDA devices this module's runtime sees (0 without a GPU or driver; never raises)");

  m.def(
      "build_info",
      [] {
        py::dict info;
        info["cuda_version"] = CUDART_VERSION;  // 1000 * major + 10 * minor, as cudaRuntimeGetVersion
        info["sass_archs"] = std::string(FLASHATTN_SASS_ARCHS);
        info["ptx_archs"] = std::string(FLASHATTN_PTX_ARCHS);
        return info;
      },
      "Compile-time facts: {'cuda_version': CUDART_VERSION, 'sass_archs': '80,86,...', 'ptx_archs': '90'} "
      "(comma-separated arch lists as FLASHATTN_CUDA_ARCHS gave them); no GPU needed");

  m.def(
      "driver_version", [] { return runtime_int_or_zero(cudaDriverGetVersion); },
      "The newest CUDA version the installed driver supports (1000 * major + 10 * minor); 0 without a "
      "driver. Never raises");

  m.def(
      "forward",
      [](const AttentionParams& p, std::uintptr_t stream, int device, bool sm90) {
        require_device(device);
        const hopper::Sm90Context context = sm90_context(device, sm90);
        py::gil_scoped_release release;
        run_attention_forward(p, as_stream(stream), context);
      },
      py::arg("params"), py::arg("stream"), py::arg("device"), py::arg("sm90") = false,
      "out, lse from q, k, v on `stream` (a cudaStream_t as int) of `device`; asynchronous. sm90: the user "
      "opted in to the Hopper kernel, which then runs the calls csrc/hopper/route.h gives it");

  m.def(
      "sm90_forward_route",
      [](const AttentionParams& p, int device, bool sm90) {
        require_device(device);
        return hopper::sm90_forward_route(p, sm90_context(device, sm90));
      },
      py::arg("params"), py::arg("device"), py::arg("sm90"),
      "'' when the Hopper forward can take the call on `device` (its K then pre-encoded when there is an "
      "encoding), else the reason it cannot (csrc/hopper/route.h)");

  m.def("built_with_sm90a", &built_with_sm90a, "Whether FLASHATTN_CUDA_ARCHS had 90a (the Hopper kernels' code)");

  m.def(
      "sm90_head_dims",
      [] {
        py::list dims;
        for (int d : {32, 64, 96, 128, 256}) {
          if (hopper::sm90_head_dim(d)) dims.append(d);
        }
        return dims;
      },
      "The head dims the Hopper kernels (forward and backward) have, of the compiled ones (csrc/hopper/route.h); "
      "no GPU needed");

  m.def(
      "backward",
      [](const AttentionParams& p, std::uintptr_t stream, int device, bool sm90, bool deterministic) {
        require_device(device);
        const hopper::Sm90Context context = sm90_context(device, sm90);
        py::gil_scoped_release release;
        run_attention_backward(p, as_stream(stream), context, deterministic);
      },
      py::arg("params"), py::arg("stream"), py::arg("device"), py::arg("sm90") = false,
      py::arg("deterministic") = false,
      "dq, dk, dv (and the delta scratch) from dout, q, k, v, out, lse on `stream`; asynchronous. sm90: the "
      "user opted in to the Hopper kernel, which then runs the calls csrc/hopper/route.h gives it (they need "
      "params.dq_accum, a zeroed fp32 tensor shaped like dq)");

  m.def(
      "sm90_backward_route",
      [](const AttentionParams& p, int device, bool sm90, bool deterministic) {
        require_device(device);
        return hopper::sm90_backward_route(p, sm90_context(device, sm90), deterministic);
      },
      py::arg("params"), py::arg("device"), py::arg("sm90"), py::arg("deterministic"),
      "'' when the Hopper backward can take the call on `device` (q, k then pre-encoded when there is an "
      "encoding, and a dq_accum given), else the reason it cannot (csrc/hopper/route.h)");

  m.def(
      "launch_info",
      [] {
        py::list rows;
        for (const auto& list : {forward_launch_info(), forward_sm90_launch_info(), backward_launch_info(),
                                  backward_sm90_launch_info()}) {
          for (const auto& i : list) rows.append(py::make_tuple(i.kernel, i.head_dim, i.threads, i.dynamic_smem_bytes));
        }
        return rows;
      },
      "[(kernel, head_dim, threads per block, dynamic shared memory bytes)] of every compiled instance; no GPU "
      "needed (the static report's occupancy)");
}
