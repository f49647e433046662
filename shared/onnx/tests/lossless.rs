//! Every field of onnx.proto survives decode → encode: the sample models (written by the `onnx`
//! Python package) come back byte for byte.

use std::path::PathBuf;

use prost::bytes::Bytes;

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.lmaas/samples")
}

#[test]
fn sample_models_encode_back_to_the_same_bytes() {
    for model in ["mlp", "dtypes", "minilm"] {
        let path = samples().join(model).join("model.onnx");
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("{} (run infra/local/samples.sh): {e}", path.display()));
        let decoded = lmaas_onnx::decode(Bytes::from(bytes.clone())).unwrap();
        let encoded = lmaas_onnx::encode(&decoded);
        assert!(encoded == bytes, "{model}: {} bytes in, {} bytes out", bytes.len(), encoded.len());
    }
}

#[test]
fn fields_the_samples_do_not_use_survive_too() {
    use lmaas_onnx::proto::*;
    // One of everything rarer: training info, sparse tensors, typed attributes, sequence and map
    // types, device configurations, functions with metadata.
    let sequence = TypeProto {
        value: Some(TypeValue::SequenceType(Box::new(ElemTypeProto {
            elem_type: Some(Box::new(TypeProto {
                value: Some(TypeValue::MapType(Box::new(MapTypeProto { key_type: Some(7), value_type: None }))),
                denotation: None,
            })),
        }))),
        denotation: Some("seq".into()),
    };
    let tensor = TensorProto {
        dims: vec![2],
        data_type: Some(1),
        float_data: vec![0.0, -1.5],
        segment: Some(Segment { begin: Some(0), end: Some(2) }),
        metadata_props: vec![StringStringEntryProto { key: Some("k".into()), value: Some(String::new()) }],
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: Some(0),
        model_version: Some(3),
        graph: Some(GraphProto {
            node: vec![NodeProto {
                op_type: Some("Custom".into()),
                overload: Some("o".into()),
                attribute: vec![AttributeProto {
                    name: Some("a".into()),
                    floats: vec![1.0, 2.0],
                    ints: vec![-1, 0, 5],
                    strings: vec![b"x".to_vec()],
                    tp: Some(sequence.clone()),
                    sparse_tensor: Some(SparseTensorProto {
                        values: Some(tensor.clone()),
                        indices: None,
                        dims: vec![4],
                    }),
                    ..Default::default()
                }],
                device_configurations: vec![NodeDeviceConfigurationProto {
                    configuration_id: Some("c".into()),
                    sharding_spec: vec![ShardingSpecProto {
                        tensor_name: Some("t".into()),
                        device: vec![0, 1],
                        index_to_device_group_map: vec![IntIntListEntryProto { key: Some(1), value: vec![2, 3] }],
                        sharded_dim: vec![ShardedDimProto {
                            axis: Some(0),
                            simple_sharding: vec![SimpleShardedDimProto {
                                dim: Some(DimValue::DimParam("n".into())),
                                num_shards: Some(2),
                            }],
                        }],
                    }],
                    pipeline_stage: Some(0),
                }],
                ..Default::default()
            }],
            value_info: vec![ValueInfoProto { name: Some("v".into()), r#type: Some(sequence), ..Default::default() }],
            quantization_annotation: vec![TensorAnnotation { tensor_name: Some("t".into()), ..Default::default() }],
            initializer: vec![tensor],
            ..Default::default()
        }),
        training_info: vec![TrainingInfoProto { algorithm: Some(GraphProto::default()), ..Default::default() }],
        functions: vec![FunctionProto { name: Some("f".into()), metadata_props: vec![], ..Default::default() }],
        configuration: vec![DeviceConfigurationProto { name: Some("d".into()), num_devices: Some(2), device: vec![] }],
        ..Default::default()
    };
    let bytes = lmaas_onnx::encode(&model);
    let back = lmaas_onnx::decode(Bytes::from(bytes.clone())).unwrap();
    assert_eq!(back, model);
    assert_eq!(lmaas_onnx::encode(&back), bytes);
}
