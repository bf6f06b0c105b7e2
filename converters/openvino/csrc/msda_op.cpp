// Shape inference, type checks and evaluate() of edgedet::MultiScaleDeformableAttention.
#include "msda_op.hpp"

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "msda_kernel.hpp"
#include "openvino/core/type/bfloat16.hpp"
#include "openvino/core/type/float16.hpp"

namespace edgedet {
namespace {

bool is_float_type(const ov::element::Type& t) {
    return t == ov::element::f32 || t == ov::element::f16 || t == ov::element::bf16;
}

bool is_index_type(const ov::element::Type& t) {
    return t == ov::element::i64 || t == ov::element::i32;
}

std::vector<int64_t> read_indices(const ov::Tensor& t) {
    std::vector<int64_t> out(t.get_size());
    if (t.get_element_type() == ov::element::i64) {
        const int64_t* src = t.data<const int64_t>();
        out.assign(src, src + out.size());
    } else {
        const int32_t* src = t.data<const int32_t>();
        for (size_t i = 0; i < out.size(); ++i)
            out[i] = src[i];
    }
    return out;
}

// bf16 is the upper half of an f32: widening is a shift (vectorises).
inline float bf16_to_f32(uint16_t bits) {
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

// f32 view of a float tensor; f16 / bf16 data is widened into `storage` (the kernel accumulates in f32).
const float* as_f32(const ov::Tensor& t, std::vector<float>& storage) {
    const auto type = t.get_element_type();
    if (type == ov::element::f32)
        return t.data<const float>();
    storage.resize(t.get_size());
    if (type == ov::element::bf16) {
        const uint16_t* src = reinterpret_cast<const uint16_t*>(t.data());
        for (size_t i = 0; i < storage.size(); ++i)
            storage[i] = bf16_to_f32(src[i]);
    } else {
        const ov::float16* src = t.data<const ov::float16>();
        for (size_t i = 0; i < storage.size(); ++i)
            storage[i] = static_cast<float>(src[i]);
    }
    return storage.data();
}

// The f32 result narrowed into the output tensor's element type (f16 or bf16).
void narrow(const std::vector<float>& src, ov::Tensor& out) {
    if (out.get_element_type() == ov::element::bf16) {
        ov::bfloat16* dst = out.data<ov::bfloat16>();
        for (size_t i = 0; i < src.size(); ++i)
            dst[i] = ov::bfloat16(src[i]);  // OpenVINO's own rounding
    } else {
        ov::float16* dst = out.data<ov::float16>();
        for (size_t i = 0; i < src.size(); ++i)
            dst[i] = ov::float16(src[i]);
    }
}

}  // namespace

MultiScaleDeformableAttention::MultiScaleDeformableAttention(const ov::OutputVector& args,
                                                             std::vector<int64_t> num_points_per_level,
                                                             std::string method)
    : Op(args), m_num_points_per_level(std::move(num_points_per_level)), m_method(std::move(method)) {
    constructor_validate_and_infer_types();
}

void MultiScaleDeformableAttention::validate_and_infer_types() {
    NODE_VALIDATION_CHECK(this, get_input_size() == 5,
                          "expects 5 inputs (value, spatial_shapes, level_start_index, sampling_locations, "
                          "attention_weights), got ", get_input_size());
    const auto value_type = get_input_element_type(0);
    NODE_VALIDATION_CHECK(this, value_type.is_dynamic() || is_float_type(value_type),
                          "value must be f32, f16 or bf16, got ", value_type);
    for (size_t i : {3u, 4u}) {
        const auto t = get_input_element_type(i);
        NODE_VALIDATION_CHECK(this, t.is_dynamic() || value_type.is_dynamic() || t == value_type,
                              "input ", i, " must have the element type of value (", value_type, "), got ", t);
    }
    for (size_t i : {1u, 2u}) {
        const auto t = get_input_element_type(i);
        NODE_VALIDATION_CHECK(this, t.is_dynamic() || is_index_type(t), "input ", i, " must be i64 or i32, got ", t);
    }

    NODE_VALIDATION_CHECK(this, m_method == "default" || m_method == "discrete",
                          "attribute method must be \"default\" or \"discrete\", got \"", m_method, "\"");
    int64_t points_total = 0;
    for (int64_t p : m_num_points_per_level) {
        NODE_VALIDATION_CHECK(this, p > 0, "attribute num_points_per_level must be positive, got a ", p);
        points_total += p;
    }
    const bool per_level = !m_num_points_per_level.empty();
    // Rank of sampling_locations and axis of its level (uniform) or point (per-level) dimension.
    const int64_t loc_rank = per_level ? 5 : 6;
    const char* loc_layout = per_level ? "[N, Lq, M, sum(num_points_per_level), 2]" : "[N, Lq, M, L, P, 2]";
    const char* attn_layout = per_level ? "[N, Lq, M, sum(num_points_per_level)]" : "[N, Lq, M, L, P]";

    const auto& value = get_input_partial_shape(0);
    const auto& shapes = get_input_partial_shape(1);
    const auto& starts = get_input_partial_shape(2);
    const auto& loc = get_input_partial_shape(3);
    const auto& attn = get_input_partial_shape(4);
    NODE_VALIDATION_CHECK(this, value.rank().compatible(4), "value must be [N, S, M, D], got ", value);
    NODE_VALIDATION_CHECK(this, shapes.rank().compatible(2), "spatial_shapes must be [L, 2], got ", shapes);
    NODE_VALIDATION_CHECK(this, starts.rank().compatible(1), "level_start_index must be [L], got ", starts);
    NODE_VALIDATION_CHECK(this, loc.rank().compatible(loc_rank), "sampling_locations must be ", loc_layout, ", got ",
                          loc);
    NODE_VALIDATION_CHECK(this, attn.rank().compatible(loc_rank - 1), "attention_weights must be ", attn_layout,
                          ", got ", attn);
    if (per_level && shapes.rank().is_static())
        NODE_VALIDATION_CHECK(this, shapes[0].compatible(static_cast<int64_t>(m_num_points_per_level.size())),
                              "spatial_shapes ", shapes, " disagree with the ", m_num_points_per_level.size(),
                              " levels of num_points_per_level");

    ov::Dimension batch = ov::Dimension::dynamic(), queries = ov::Dimension::dynamic();
    ov::Dimension heads = ov::Dimension::dynamic(), channels = ov::Dimension::dynamic();
    if (value.rank().is_static()) {
        batch = value[0];
        heads = value[2];
        channels = value[3];
    }
    if (loc.rank().is_static()) {
        NODE_VALIDATION_CHECK(this, loc[loc_rank - 1].compatible(2), "sampling_locations must end in 2 (x, y), got ",
                              loc);
        const bool agree = ov::Dimension::merge(batch, batch, loc[0]) && ov::Dimension::merge(heads, heads, loc[2]);
        NODE_VALIDATION_CHECK(this, agree, "sampling_locations ", loc, " disagree with value ", value, " in N or M");
        queries = loc[1];
        if (attn.rank().is_static()) {
            for (int64_t i = 0; i < loc_rank - 1; ++i)
                NODE_VALIDATION_CHECK(this, attn[i].compatible(loc[i]), "attention_weights ", attn,
                                      " must equal sampling_locations[:-1] of ", loc);
        }
        if (per_level)
            NODE_VALIDATION_CHECK(this, loc[3].compatible(points_total), "sampling_locations ", loc, " hold ", loc[3],
                                  " points per head but num_points_per_level sums to ", points_total);
        else if (shapes.rank().is_static())
            NODE_VALIDATION_CHECK(this, shapes[0].compatible(loc[3]), "spatial_shapes ", shapes,
                                  " disagree with the level count of sampling_locations ", loc);
    }
    const ov::Dimension out_channels = (heads.is_static() && channels.is_static())
                                           ? ov::Dimension(heads.get_length() * channels.get_length())
                                           : ov::Dimension::dynamic();
    set_output_type(0, value_type, ov::PartialShape{batch, queries, out_channels});
}

std::shared_ptr<ov::Node> MultiScaleDeformableAttention::clone_with_new_inputs(const ov::OutputVector& new_args) const {
    check_new_args_count(this, new_args);
    return std::make_shared<MultiScaleDeformableAttention>(new_args, m_num_points_per_level, m_method);
}

bool MultiScaleDeformableAttention::visit_attributes(ov::AttributeVisitor& visitor) {
    visitor.on_attribute("num_points_per_level", m_num_points_per_level);
    visitor.on_attribute("method", m_method);
    return true;
}

bool MultiScaleDeformableAttention::has_evaluate() const {
    const auto t = get_input_element_type(0);
    return is_float_type(t) && is_index_type(get_input_element_type(1)) && is_index_type(get_input_element_type(2));
}

bool MultiScaleDeformableAttention::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    const ov::Tensor& value = inputs[0];
    const ov::Tensor& loc = inputs[3];
    const ov::Tensor& attn = inputs[4];
    const ov::Shape& vs = value.get_shape();
    const ov::Shape& ls = loc.get_shape();
    const bool per_level = !m_num_points_per_level.empty();
    const size_t loc_rank = per_level ? 5 : 6;
    OPENVINO_ASSERT(vs.size() == 4 && ls.size() == loc_rank && attn.get_shape().size() == loc_rank - 1,
                    "MultiScaleDeformableAttention: bad input ranks ", vs, " ", ls, " ", attn.get_shape());
    OPENVINO_ASSERT(ls[0] == vs[0] && ls[2] == vs[2] && ls[loc_rank - 1] == 2,
                    "MultiScaleDeformableAttention: sampling_locations ", ls, " disagree with value ", vs);
    OPENVINO_ASSERT(ov::Shape(ls.begin(), ls.end() - 1) == attn.get_shape(),
                    "MultiScaleDeformableAttention: attention_weights ", attn.get_shape(),
                    " must equal sampling_locations[:-1] ", ls);

    MsdaProblem pb;
    pb.batch = vs[0];
    pb.tokens = vs[1];
    pb.heads = vs[2];
    pb.channels = vs[3];
    pb.queries = ls[1];
    pb.discrete = m_method == "discrete";
    if (per_level) {
        pb.levels = m_num_points_per_level.size();
        pb.points = m_num_points_per_level;
        int64_t total = 0;
        for (int64_t p : pb.points)
            total += p;
        OPENVINO_ASSERT(static_cast<size_t>(total) == ls[3], "MultiScaleDeformableAttention: sampling_locations ", ls,
                        " hold ", ls[3], " points per head but num_points_per_level sums to ", total);
    } else {
        pb.levels = ls[3];
        pb.points.assign(pb.levels, static_cast<int64_t>(ls[4]));
    }

    const std::vector<int64_t> shapes = read_indices(inputs[1]);
    pb.level_starts = read_indices(inputs[2]);
    OPENVINO_ASSERT(shapes.size() == 2 * pb.levels && pb.level_starts.size() == pb.levels,
                    "MultiScaleDeformableAttention: spatial_shapes/level_start_index must describe ", pb.levels,
                    " levels");
    for (size_t l = 0; l < pb.levels; ++l) {
        pb.heights.push_back(shapes[2 * l]);
        pb.widths.push_back(shapes[2 * l + 1]);
        OPENVINO_ASSERT(pb.level_starts[l] >= 0 && shapes[2 * l] > 0 && shapes[2 * l + 1] > 0 &&
                            static_cast<size_t>(pb.level_starts[l] + shapes[2 * l] * shapes[2 * l + 1]) <= pb.tokens,
                        "MultiScaleDeformableAttention: level ", l, " (start ", pb.level_starts[l], ", ",
                        shapes[2 * l], "x", shapes[2 * l + 1], ") exceeds the ", pb.tokens, " value tokens");
    }

    // The kernel computes token indices in float (exact below 2^24) to vectorise over samples.
    OPENVINO_ASSERT(pb.tokens < (size_t{1} << 24), "MultiScaleDeformableAttention: at most 2^24 value tokens are "
                    "supported, got ", pb.tokens);

    ov::Tensor& out = outputs[0];
    out.set_shape(ov::Shape{pb.batch, pb.queries, pb.heads * pb.channels});
    std::vector<float> value_f32, loc_f32, attn_f32, out_f32;
    pb.value = as_f32(value, value_f32);
    pb.sampling_locations = as_f32(loc, loc_f32);
    pb.attention_weights = as_f32(attn, attn_f32);
    const bool f32_out = out.get_element_type() == ov::element::f32;
    if (f32_out) {
        pb.output = out.data<float>();
    } else {
        out_f32.resize(out.get_size());
        pb.output = out_f32.data();
    }
    msda_forward(pb);
    if (!f32_out)
        narrow(out_f32, out);
    return true;
}

}  // namespace edgedet
